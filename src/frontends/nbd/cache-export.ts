/**
 * Cache exports: `--export NAME:cache=PATH[:ro]` serves a raw image file over NBD through a
 * compressed, deduplicated RAM cache — tmem's cleancache for disk images. The file is always the
 * truth; the cache holds clean copies of its pages in one ephemeral pool of the page store
 * ("nbd-cache", one dedup domain for every cache export), which the store drops first under
 * pressure and which may lose any page at any time.
 *
 *   READ ──▶ page cached? ──yes──▶ decompress into the reply (RAM)
 *              │ no
 *              ▼
 *            read the run of missing pages from the file (async, on libuv's pool; at most
 *            FILE_READS_IN_FLIGHT reads at once) ──▶ reply, and put each page (ephemeral)
 *   WRITE ──▶ drop the cached pages it touches ──▶ pwrite to the file (opened O_DSYNC: on the
 *            medium before the reply, so a crash loses nothing) ──▶ put the whole pages written
 *   TRIM: a hint, ignored (the file keeps its bytes). WRITE_ZEROES: zeroes written to the file.
 *   BLOCK_STATUS: pages cached as zero pages are ZERO, everything else data (the file itself is not
 *   inspected for holes).
 *
 * Keys: a page is cached under (key, page index). Each image file (one per device and inode:
 * two exports of the same file share it, and its writes) has its own key. Images of equal size
 * are scanned once in the background, one at a time, sequentially (SHA-256 of the whole file);
 * images with the same digest are identical and then read their pages under one shared group
 * key, so the second and later images are served from RAM without reading their files. A write
 * to one of them marks its pages in a bitmap (1 bit per page) and those pages go back to the
 * image's own key: the others keep reading the group's copy. A write during the scan makes the
 * image keep its own key. Dedup still shares the objects of identical pages under any key, so
 * the cache holds about one copy of identical images either way; the group key saves the reads.
 *
 * Ordering: a read puts what it read only when no write to its image started or ended while it
 * ran (a per-image epoch), and a write puts what it wrote only when no other write to the image
 * overlapped it; otherwise the pages are left uncached, never stale.
 *
 * An image is a regular file or a block device (its size from sysfs).
 *
 * Fixed memory: up to FILE_READS_IN_FLIGHT aligned bounce buffers of MAX_RUN_PAGES pages for the
 * O_DIRECT reads (16 MiB at 4 KiB pages), kept once allocated; 1 MiB for the scan while it runs.
 *
 * Known limits: the file must not be changed by anyone else while it is exported (the cache
 * would not know). Raw images only. The identity scan reads each same-size image once at start.
 * The cache is bounded by --max-pool like everything else (unbounded without it).
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import type { PageStore, PoolId } from '../../core/page-store.js';
import { deviceOrFileSize } from '../../engine/device.js';
import { ZdedupError } from '../../errors.js';
import { alignedBuffer, dropCached } from '../../tiers/disk/aligned.js';
import type { Logger } from '../log.js';
import { NbdExport, type ExportSpec } from './export.js';
import { ERRNO, STATE_ZERO, type WireErrno } from './protocol.js';

/** File reads in flight at most, over every cache export (each holds one buffer of its run). */
const FILE_READS_IN_FLIGHT = 16;
/** Pages per file read at most (a longer run of misses is read in several). */
const MAX_RUN_PAGES = 256;
/** Bytes per read of the identity scan. */
const SCAN_CHUNK = 1 << 20;
/** Group keys start here, above any image's own key. */
const GROUP_KEY_BASE = 2 ** 40;

type ScanState = 'none' | 'queued' | 'scanning' | 'own' | 'shared';

/** One image file, shared by the exports that serve it. */
class CacheImage {
  readonly ownKey: number;
  /** The key its unwritten pages are cached under: ownKey, or the group's key once identical. */
  key: number;
  /** Pages written since the image joined a group (their content is its own): 1 bit per page. */
  diverged: Uint32Array | null = null;
  /** Bumped when a write starts and when it ends (see Ordering in the header). */
  epoch = 0;
  writing = 0;
  writeStarts = 0;
  scan: ScanState = 'none';
  readOnly = true;
  // per-image counters, shown per export in /stats
  fileReads = 0;
  fileReadBytes = 0;
  fileWriteBytes = 0;
  hitPages = 0;
  missPages = 0;
  scanBytes = 0;

  /**
   * fd: writes (O_DSYNC). rfd: reads of missed pages and the scan — O_DIRECT where the filesystem
   * allows it (the cache holds what was read; the kernel's page cache should not hold it too),
   * else fd (then each range read is dropped from the page cache after).
   */
  constructor(readonly path: string, readonly fd: number, readonly rfd: number, readonly size: number, readonly pages: number, n: number) {
    this.ownKey = n;
    this.key = n;
  }

  keyOf(page: number): number {
    const d = this.diverged;
    return d !== null && (d[page >>> 5]! & (1 << (page & 31))) !== 0 ? this.ownKey : this.key;
  }
}

/** Per-export facts of a cache export, for /stats. */
export interface CacheExportInfo {
  path: string;
  /** Identity scan: none (no image of the same size), queued, scanning, own (no identical image found or written during the scan), shared. */
  identity: ScanState;
  file_reads: number;
  file_read_bytes: number;
  file_write_bytes: number;
  cache_hit_pages: number;
  cache_miss_pages: number;
  scan_bytes: number;
}

/** The cache exports of one server: their images, the shared pool, the identity scanner, the read bound. */
export class CacheExports {
  readonly pool: PoolId;
  private readonly images = new Map<string, CacheImage>(); // by "dev:ino"
  private readonly bySize = new Map<number, CacheImage[]>();
  private readonly groups = new Map<string, number>(); // digest -> group key
  private nextGroup = GROUP_KEY_BASE;
  private reads = 0;
  private readonly readQueue: (() => void)[] = [];
  private readonly scanQueue: CacheImage[] = [];
  private scanning = false;
  private scan: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(readonly store: PageStore, readonly pageSize: number, private readonly log: Logger) {
    this.pool = store.createPool('nbd-cache', { ephemeral: true });
  }

  /** Opens (or shares) the image behind a cache export spec; sets spec.size to the file's size. */
  open(spec: ExportSpec): CacheExport {
    const path = spec.cache!.path;
    let st: fs.Stats;
    try {
      st = fs.statSync(path);
    } catch (e) {
      throw new ZdedupError('ERR_IO', `--export "${spec.name}": cannot open cache image ${path}: ${(e as Error).message}`, { cause: e });
    }
    if (!st.isFile() && !st.isBlockDevice()) throw new ZdedupError('ERR_INVALID_ARGUMENT', `--export "${spec.name}": cache image ${path} is not a regular file or block device`);
    const id = st.isBlockDevice() ? `b${st.rdev}` : `${st.dev}:${st.ino}`;
    let img = this.images.get(id);
    const readOnly = spec.readOnly === true;
    if (img !== undefined && img.readOnly && !readOnly) {
      throw new ZdedupError('ERR_INVALID_ARGUMENT', `--export "${spec.name}": ${path} is already served read-only by another export; give every export of one file the same :ro`);
    }
    if (img === undefined) {
      let fd: number;
      try {
        // O_DSYNC: a write is on the medium when pwrite returns, before the reply.
        fd = fs.openSync(path, readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR | fs.constants.O_DSYNC);
      } catch (e) {
        throw new ZdedupError('ERR_IO', `--export "${spec.name}": cannot open cache image ${path}: ${(e as Error).message}`, { cause: e });
      }
      const size = deviceOrFileSize(fd);
      const bad = size === 0 ? 'is empty (or its size is unknown)' : Math.ceil(size / this.pageSize) > 2 ** 32 ? 'has more than 2^32 pages' : null;
      if (bad !== null) {
        fs.closeSync(fd);
        throw new ZdedupError('ERR_INVALID_ARGUMENT', `--export "${spec.name}": cache image ${path} ${bad}`);
      }
      let rfd = fd;
      try {
        rfd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_DIRECT);
      } catch {
        // tmpfs and some FUSE filesystems refuse O_DIRECT: buffered reads, dropped after
      }
      img = new CacheImage(path, fd, rfd, size, Math.ceil(size / this.pageSize), this.images.size);
      img.readOnly = readOnly;
      this.images.set(id, img);
      const same = this.bySize.get(img.size) ?? [];
      same.push(img);
      this.bySize.set(img.size, same);
      // Only images with a peer of the same size can be identical: scan those (the first too, once a peer appears).
      if (same.length >= 2) for (const s of same) if (s.scan === 'none') { s.scan = 'queued'; this.scanQueue.push(s); }
    }
    spec.size = img.size;
    return new CacheExport(this, img, spec);
  }

  /** Starts the identity scans (after every export is open). */
  start(): void {
    this.scan = this.scanNext();
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.scan; // stops at its next chunk
    for (const img of this.images.values()) {
      try { fs.closeSync(img.fd); } catch { /* already closed */ }
      if (img.rfd !== img.fd) try { fs.closeSync(img.rfd); } catch { /* already closed */ }
    }
  }

  // ---- file reads, bounded ------------------------------------------------------------------

  /** Reads file bytes [pos, pos + buf.length) into buf; resolves with the bytes read. */
  async readFile(img: CacheImage, buf: Uint8Array, pos: number): Promise<number> {
    if (this.reads >= FILE_READS_IN_FLIGHT) await new Promise<void>((r) => this.readQueue.push(r));
    else this.reads++;
    try {
      if (this.closed) throw new ZdedupError('ERR_CLOSED', 'server is closing');
      // O_DIRECT needs an aligned buffer: one of the kept bounce buffers (a fresh 1 MiB
      // allocation per read showed up as 0.2 ms each, and as GC of external memory).
      const direct = img.rfd !== img.fd && buf.length <= MAX_RUN_PAGES * this.pageSize;
      const bounce = direct ? this.bounce.pop() ?? alignedBuffer(MAX_RUN_PAGES * this.pageSize) : null;
      try {
        const n = await readImage(img, buf, pos, bounce);
        img.fileReads++;
        img.fileReadBytes += n;
        return n;
      } finally {
        if (bounce !== null) this.bounce.push(bounce);
      }
    } finally {
      const next = this.readQueue.shift();
      if (next) next(); else this.reads--;
    }
  }

  /** Aligned buffers of MAX_RUN_PAGES pages for O_DIRECT reads, kept between reads (at most one per read in flight). */
  private readonly bounce: Buffer[] = [];

  // ---- identity scan ------------------------------------------------------------------------

  private async scanNext(): Promise<void> {
    if (this.scanning) return;
    this.scanning = true;
    try {
      for (let img = this.scanQueue.shift(); img !== undefined && !this.closed; img = this.scanQueue.shift()) {
        await this.scanOne(img);
      }
    } finally {
      this.scanning = false;
    }
  }

  private async scanOne(img: CacheImage): Promise<void> {
    img.scan = 'scanning';
    const epoch = img.epoch;
    const h = createHash('sha256');
    const buf = alignedBuffer(SCAN_CHUNK);
    try {
      for (let pos = 0; pos < img.size && !this.closed; pos += SCAN_CHUNK) {
        const want = Math.min(SCAN_CHUNK, img.size - pos);
        const n = await readImage(img, buf, pos, buf); // buf is an alignedBuffer
        if (n < want) throw new Error(`short read at ${pos}`);
        img.scanBytes += n;
        h.update(buf.subarray(0, n));
      }
    } catch (e) {
      this.log.warn('cache image identity scan failed: it keeps its own cache key', { path: img.path, cause: e });
      img.scan = 'own';
      return;
    }
    if (this.closed) return;
    if (img.epoch !== epoch || img.writing !== 0) {
      img.scan = 'own'; // written meanwhile: the digest may not describe the file
      return;
    }
    const digest = `${img.size}:${h.digest('hex')}`;
    let g = this.groups.get(digest);
    if (g === undefined) {
      g = this.nextGroup++;
      this.groups.set(digest, g);
    }
    img.key = g;
    img.diverged = new Uint32Array(Math.ceil(img.pages / 32));
    img.scan = 'shared';
    // Pages cached under the image's own key before are not read by it any more.
    this.store.flushObject(this.pool, img.ownKey);
    this.log.info('cache image identity', { path: img.path, group: g - GROUP_KEY_BASE, sha256: digest.slice(digest.indexOf(':') + 1) });
  }
}

/**
 * Reads image bytes [pos, pos + buf.length) into buf (pos and length multiples of 4096); returns
 * the bytes read (fewer only at the end of the image). With O_DIRECT through `bounce`, an
 * aligned buffer of at least buf.length bytes (buf itself when it is one; a fresh one when
 * null), else buffered and then dropped from the page cache.
 */
async function readImage(img: CacheImage, buf: Uint8Array, pos: number, bounce: Buffer | null): Promise<number> {
  if (img.rfd === img.fd) {
    const n = await readAll(img.fd, buf, pos);
    dropCached(img.fd, pos, buf.length);
    return n;
  }
  const b = bounce === buf ? bounce : bounce !== null ? bounce.subarray(0, buf.length) : alignedBuffer(buf.length);
  const n = await new Promise<number>((resolve, reject) => {
    // One read: O_DIRECT reads of a regular file or block device are short only at its end.
    fs.read(img.rfd, b, 0, b.length, pos, (err, k) => {
      if (err) reject(new ZdedupError('ERR_IO', `read of cache image failed: ${err.message}`, { cause: err })); else resolve(k);
    });
  });
  if (b !== buf) buf.set(b.subarray(0, n));
  return n;
}

/** pread until `buf` is full or the file ends; returns the bytes read. */
function readAll(fd: number, buf: Uint8Array, pos: number): Promise<number> {
  return new Promise((resolve, reject) => {
    let got = 0;
    const step = (): void => {
      fs.read(fd, buf, got, buf.length - got, pos + got, (err, n) => {
        if (err) { reject(new ZdedupError('ERR_IO', `read of cache image failed: ${err.message}`, { cause: err })); return; }
        got += n;
        if (n === 0 || got === buf.length) resolve(got); else step();
      });
    };
    step();
  });
}

function writeAll(fd: number, buf: Uint8Array, pos: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let done = 0;
    const step = (): void => {
      fs.write(fd, buf, done, buf.length - done, pos + done, (err, n) => {
        if (err) { reject(new ZdedupError('ERR_IO', `write of cache image failed: ${err.message}`, { cause: err })); return; }
        done += n;
        if (done === buf.length) resolve(); else step();
      });
    };
    step();
  });
}

/** An NBD export of one image file through the cache. */
export class CacheExport extends NbdExport {
  private readonly page: Buffer;

  constructor(private readonly cache: CacheExports, private readonly img: CacheImage, spec: ExportSpec) {
    super(cache.store, spec, cache.pageSize, cache.pool as unknown as never);
    this.page = Buffer.alloc(cache.pageSize);
  }

  info(): CacheExportInfo {
    const i = this.img;
    return {
      path: i.path, identity: i.scan, file_reads: i.fileReads, file_read_bytes: i.fileReadBytes, file_write_bytes: i.fileWriteBytes,
      cache_hit_pages: i.hitPages, cache_miss_pages: i.missPages, scan_bytes: i.scanBytes,
    };
  }

  /**
   * Fills dst from the cache, and the pages it misses from the file (then cached). Returns
   * synchronously when every page was cached, else a Promise.
   */
  override read(offset: number, dst: Uint8Array): void | Promise<void> {
    const P = this.pageSize;
    const img = this.img;
    const store = this.cache.store;
    const pool = this.cache.pool;
    const end = offset + dst.length;
    const first = Math.floor(offset / P);
    const last = Math.ceil(end / P); // exclusive
    let waits: Promise<void>[] | null = null;
    let runStart = -1;
    for (let p = first; p <= last; p++) {
      let hit = false;
      if (p < last) {
        const from = p * P;
        if (from >= offset && from + P <= end) {
          hit = store.get(pool, img.keyOf(p), p, dst, from - offset) === 'hit';
        } else if (store.get(pool, img.keyOf(p), p, this.page) === 'hit') {
          hit = true;
          copyPart(this.page, from, dst, offset);
        }
        if (hit) img.hitPages++; else img.missPages++;
      }
      if (!hit && p < last) {
        if (runStart < 0) runStart = p;
        if (p - runStart + 1 < MAX_RUN_PAGES) continue;
        (waits ??= []).push(this.fill(runStart, p + 1, dst, offset));
        runStart = -1;
      } else if (runStart >= 0) {
        (waits ??= []).push(this.fill(runStart, p, dst, offset));
        runStart = -1;
      }
    }
    if (waits === null) return;
    return Promise.all(waits).then(() => undefined);
  }

  /** Reads pages [a, b) from the file, copies the part dst wants, and caches them if no write overlapped. */
  private async fill(a: number, b: number, dst: Uint8Array, offset: number): Promise<void> {
    const P = this.pageSize;
    const img = this.img;
    const epoch = img.epoch;
    const clean = img.writing === 0;
    // Whole pages inside the reply are read straight into it; a run with a partial page at either
    // edge goes through a buffer of its own (one per run of misses, not per page).
    const direct = a * P >= offset && b * P <= offset + dst.length;
    const buf = direct ? dst.subarray(a * P - offset, b * P - offset) : Buffer.allocUnsafe((b - a) * P);
    const want = Math.min(buf.length, img.size - a * P);
    const n = await this.cache.readFile(img, buf, a * P);
    if (n < want) throw new ZdedupError('ERR_IO', `cache image ${img.path} is shorter than it was (read ${n} of ${want} bytes at ${a * P})`);
    buf.fill(0, n); // past the end of the file (its last, partial page)
    if (!direct) for (let p = a; p < b; p++) copyPart(buf.subarray((p - a) * P, (p - a + 1) * P), p * P, dst, offset);
    if (!clean || img.epoch !== epoch) return; // a write overlapped: what was read may be stale
    const store = this.cache.store;
    for (let p = a; p < b; p++) store.put(this.cache.pool, img.keyOf(p), p, buf.subarray((p - a) * P, (p - a + 1) * P));
  }

  /** Writes src to the file at `offset` (writethrough), then caches the whole pages written. */
  override write(offset: number, src: Uint8Array): WireErrno | Promise<WireErrno> {
    return this.writeFile(offset, src);
  }

  private async writeFile(offset: number, src: Uint8Array): Promise<WireErrno> {
    const P = this.pageSize;
    const img = this.img;
    const store = this.cache.store;
    const pool = this.cache.pool;
    const first = Math.floor(offset / P);
    const last = Math.ceil((offset + src.length) / P);
    img.epoch++;
    img.writing++;
    const seq = ++img.writeStarts;
    // Drop what the cache holds for these pages under the key the image reads them by, then
    // mark them as the image's own (the group's copy stays right for the other images).
    for (let p = first; p < last; p++) {
      if (img.diverged !== null) img.diverged[p >>> 5]! |= 1 << (p & 31);
      store.flush(pool, img.keyOf(p), p);
    }
    let ok = false;
    try {
      await writeAll(img.fd, src, offset);
      img.fileWriteBytes += src.length;
      ok = true;
    } finally {
      img.epoch++;
      img.writing--;
    }
    if (ok && img.writing === 0 && img.writeStarts === seq) {
      for (let p = first; p < last; p++) {
        const from = p * P;
        if (from >= offset && from + P <= offset + src.length) store.put(pool, img.keyOf(p), p, src.subarray(from - offset, from - offset + P));
      }
    }
    return ERRNO.OK;
  }

  /** A hint: the file keeps its bytes (reading a trimmed range returns what it held). */
  override trim(): void {
    // nothing to do
  }

  override zero(offset: number, length: number): WireErrno | Promise<WireErrno> {
    return this.zeroFile(offset, length);
  }

  private async zeroFile(offset: number, length: number): Promise<WireErrno> {
    const chunk = 1 << 20;
    const zeroes = new Uint8Array(Math.min(chunk, length)); // one per WRITE_ZEROES
    for (let pos = 0; pos < length; pos += chunk) {
      const e = await this.writeFile(offset + pos, zeroes.subarray(0, Math.min(chunk, length - pos)));
      if (e !== ERRNO.OK) return e;
    }
    return ERRNO.OK;
  }

  /**
   * base:allocation extents: pages the cache knows to be zero pages are ZERO (clients may skip
   * reading them), everything else is data (the file itself is not inspected). Runs of equal
   * state merge; at most BLOCK_STATUS_MAX_BYTES per reply, or one extent with reqOne.
   */
  override blockStatus(offset: number, length: number, reqOne: boolean, out: Uint32Array, maxExtents: number): number {
    const img = this.img;
    const store = this.cache.store;
    const pool = this.cache.pool;
    const stateOf = (p: number): number => (store.peek(pool, img.keyOf(p), p) === 1 ? STATE_ZERO : 0);
    const runEnd = (p: number, limit: number): number => {
      const state = stateOf(p);
      let end = p + 1;
      while (end < limit && stateOf(end) === state) end++;
      return end;
    };
    return this.fillExtents(offset, length, reqOne, out, maxExtents, stateOf, runEnd);
  }

}

/** Copies the bytes of one page (whose file offset is `from`) that fall inside dst (at file offset `offset`). */
function copyPart(page: Uint8Array, from: number, dst: Uint8Array, offset: number): void {
  const a = Math.max(from, offset);
  const b = Math.min(from + page.length, offset + dst.length);
  if (b > a) dst.set(page.subarray(a - from, b - from), a - offset);
}
