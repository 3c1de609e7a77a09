/**
 * DiskTier: a log of compressed objects in large segments on a file or block device.
 *
 * Objects arrive still compressed, one append at a time, and are packed back to back into the
 * open segment's RAM write buffer. A full buffer is sealed and written with one large aligned
 * write (O_DIRECT where the medium allows it, so cold data does not come back into RAM through
 * the page cache; otherwise buffered writes and reads followed by posix_fadvise DONTNEED). A
 * record is readable from the moment it is appended: from its buffer until the segment is on
 * disk, then from disk with one small aligned read. Nothing is ever overwritten in place: a
 * released record is garbage that the cleaner reclaims by copying the live records of a sparse
 * segment forward and freeing it (LFS). The core decides which records are live and which
 * segments to clean; this file owns only the bytes.
 *
 *   write buffers (RAM, 2 x SEG)            backing file
 *   +-----------------------+               +--------+------+------+------+-- ... --+
 *   | OPEN: records so far  |-- seal -->    | header | seg0 | seg1 | seg2 |         |
 *   +-----------------------+   one write   +--------+------+------+------+-- ... --+
 *   | WRITING (in flight)   |                 states: FREE -> OPEN -> WRITING -> SEALED -> FREE
 *   +-----------------------+                 (STRANDED: the write failed; kept in RAM, retried)
 *
 * Per-segment state lives in typed arrays (state, used and live bytes, seal time, readers). No
 * structure exists per record: the core's object table holds (segment, offset) for each object.
 *
 * Invariants:
 * - A segment in a buffer (OPEN, WRITING, STRANDED) is read from the buffer, never from disk.
 * - A segment with readers in flight is never reused: freeing it waits (FREEING) until the last
 *   read settles, so a read started before a release or a clean still finds its record.
 * - live[s] = sum of the spans of records in s that the core still points at (appends add,
 *   release and cleaning subtract); a SEALED segment whose live reaches 0 is freed at once.
 * - `reserve` free segments are kept for the cleaner: plain appends never take them.
 *
 * Known limits: the format has no journal yet (a restart starts from an empty tier: durable mode
 * is a later step); the newest segment stays in its RAM buffer until it fills (sealOpen() writes
 * it early, wasting its tail until cleaned); the backing file is sparse, so a filesystem that fills up fails the write of
 * a segment (the segment stays in RAM and is retried; appends are refused meanwhile).
 */
import fs from 'node:fs';
import { ZdedupError } from '../../errors.js';
import { deviceOrFileSize } from '../../engine/device.js';
import { NO_REMOTE_STATS, type AppendResult, type CleanResult, type CleaningOwner, type Tier, type TierStats } from '../tier.js';
import { alignedBuffer, dropCached } from './aligned.js';
import {
  ALIGN, FILE_HEADER_SIZE, FILE_MAGIC, REC_HEADER_SIZE, SEG_HEADER_SIZE, alignUp, checkPayload, checkSegHeader, encodeFileHeader,
  encodeRecord, encodeSegHeader, readRecordHeader, recordSpan, type RecordView,
} from './format.js';

export interface DiskTierOptions {
  /** File or block device. A file is created (mode 0600) when missing. */
  path: string;
  /** Size to create or resize a file to; required for a new file. Ignored for a block device. */
  size?: number;
  pageSize: number;
  /** Bytes per segment: a multiple of 4096, at least 4 x (page size + 4 KiB). Default 4 MiB. */
  segmentSize?: number;
  /** RAM write buffers of one segment each (>= 2: one filling while one is written). Default 2. */
  writeBuffers?: number;
  /** Try O_DIRECT (default true); falls back to buffered I/O + fadvise when the medium refuses it. */
  direct?: boolean;
  /**
   * An existing file or device is used only when its first 4 KiB are zeroes or a zdedup header,
   * so a mistyped path never destroys other data; true overrides that check. Default false.
   */
  overwrite?: boolean;
  /** Where the tier reports episodes (write failures, recovery, damaged segments). */
  events?: (level: 'info' | 'warn' | 'error', msg: string, fields: Record<string, unknown>) => void;
}

export const DEFAULT_SEGMENT_SIZE = 4 << 20;

const FREE = 0, OPEN = 1, WRITING = 2, SEALED = 3, STRANDED = 4, FREEING = 5;
const STATE_NAMES = ['free', 'open', 'writing', 'sealed', 'stranded', 'freeing'];
const RETRY_MS = 1000;
const READ_BUFFERS_KEPT = 64;

export class DiskTier implements Tier {
  readonly name = 'disk';
  readonly path: string;
  readonly segmentSize: number;
  readonly segmentCount: number;
  readonly backingSize: number;
  /** True when the medium took O_DIRECT. */
  readonly direct: boolean;
  lastW0 = 0;
  lastW1 = 0;
  locBuf: Uint8Array = Buffer.alloc(0);
  locOff = 0;

  private readonly fd: number;
  private readonly pageSize: number;
  private readonly reserve: number;
  private readonly events: NonNullable<DiskTierOptions['events']>;

  // ---- per segment ----
  private readonly segState: Uint8Array;
  private readonly segUsed: Uint32Array;
  private readonly segLive: Uint32Array;
  private readonly segSealed: Float64Array; // ms timestamp
  private readonly segReaders: Uint16Array;
  private readonly segBuf: Int8Array;       // write buffer holding the segment, or -1
  private readonly segRecords: Uint32Array;
  private readonly segNew: Uint32Array;      // bytes of new-data records (not cleaner copies) in the segment
  private readonly segDamaged: Uint8Array;
  // Free segments, two stacks: ranges written before come first, so a sparse file on a full
  // filesystem reuses blocks it already has instead of asking for new ones; fresh ranges after.
  private readonly freeSegs: Uint32Array;   // stack of free segments written before
  private freeWritten = 0;
  private readonly freshSegs: Uint32Array;  // stack of free segments never written (or whose write failed)
  private freshCount: number;
  private readonly segWritten: Uint8Array;  // 1 once a write of the segment succeeded
  private get freeCount(): number { return this.freeWritten + this.freshCount; }

  // ---- write buffers ----
  private readonly bufs: Buffer[] = [];
  private readonly bufFree: number[] = [];
  private cur = -1;      // buffer being filled
  private curSeg = -1;
  private curUsed = 0;
  private curRecords = 0;
  private seq = 1;
  private writesInFlight = 0;
  private stranded: number[] = [];
  private retryTimer: NodeJS.Timeout | undefined;
  private failing = false;

  // ---- reads ----
  private readonly readSpan: number;
  private readonly readBufs: Buffer[] = [];
  private cleanBuf: Buffer | undefined;
  private readonly rv: RecordView = { codec: 0, len: 0, id: 0, fpLo: 0, fpHi: 0 };

  private inUse = 0;   // segments not FREE (FREEING ones included)
  private freeing = 0; // segments waiting for their readers before they are free
  private waiters: (() => void)[] = [];
  private idleResolvers: (() => void)[] = [];
  private closed = false;

  // ---- statistics ----
  private c = {
    disk_bytes_written: 0, disk_record_bytes_appended: 0, cleaned_segments: 0, disk_write_errors: 0,
    disk_read_errors: 0, disk_reads: 0, disk_live_bytes: 0, disk_used_bytes: 0, disk_cleaner_bytes_moved: 0, disk_new_bytes_written: 0,
  };

  constructor(o: DiskTierOptions) {
    const P = o.pageSize;
    const seg = o.segmentSize ?? DEFAULT_SEGMENT_SIZE;
    const minSeg = 4 * (P + ALIGN);
    if (!Number.isSafeInteger(seg) || seg % ALIGN !== 0 || seg < minSeg || seg > 1 << 30) {
      throw new ZdedupError('ERR_INVALID_ARGUMENT', `segment size must be a multiple of 4096 from ${minSeg} to 1 GiB, got ${String(seg)}`);
    }
    const nbuf = o.writeBuffers ?? 2;
    if (!Number.isSafeInteger(nbuf) || nbuf < 2 || nbuf > 64) throw new ZdedupError('ERR_INVALID_ARGUMENT', `write buffers must be 2..64, got ${String(nbuf)}`);
    this.path = o.path;
    this.pageSize = P;
    this.segmentSize = seg;
    this.events = o.events ?? (() => {});
    const opened = openBacking(o.path, o.size, o.direct ?? true);
    if (opened.existed && o.overwrite !== true) checkOurs(opened.fd, o.path);
    this.fd = opened.fd;
    this.direct = opened.direct;
    this.backingSize = opened.size;
    const count = Math.floor((opened.size - FILE_HEADER_SIZE) / seg);
    if (count < 4) {
      fs.closeSync(this.fd);
      throw new ZdedupError('ERR_INVALID_ARGUMENT', `backing ${o.path} holds ${Math.max(0, count)} segments of ${seg} bytes; it needs at least 4 (${FILE_HEADER_SIZE + 4 * seg} bytes)`);
    }
    if (count > 0xffffffff / 2) throw new ZdedupError('ERR_INVALID_ARGUMENT', 'backing has too many segments; use a larger segment size');
    this.segmentCount = count;
    this.reserve = Math.min(2, count - 2);
    this.segState = new Uint8Array(count);
    this.segUsed = new Uint32Array(count);
    this.segLive = new Uint32Array(count);
    this.segSealed = new Float64Array(count);
    this.segReaders = new Uint16Array(count);
    this.segBuf = new Int8Array(count).fill(-1);
    this.segRecords = new Uint32Array(count);
    this.segNew = new Uint32Array(count);
    this.segDamaged = new Uint8Array(count);
    this.freeSegs = new Uint32Array(count);
    this.freshSegs = new Uint32Array(count);
    this.segWritten = new Uint8Array(count);
    // Pop order 0, 1, 2, ...: a fresh tier fills the medium front to back.
    for (let i = 0; i < count; i++) this.freshSegs[i] = count - 1 - i;
    this.freshCount = count;
    for (let i = 0; i < nbuf; i++) { this.bufs.push(alignedBuffer(seg)); this.bufFree.push(i); }
    this.readSpan = alignUp(ALIGN + REC_HEADER_SIZE + P);
    // A fresh file header: without durable mode, earlier contents are not used.
    const h = alignedBuffer(FILE_HEADER_SIZE);
    encodeFileHeader(h, P, seg, count, opened.size);
    try {
      fs.writeSync(this.fd, h, 0, FILE_HEADER_SIZE, 0);
    } catch (e) {
      fs.closeSync(this.fd);
      throw new ZdedupError('ERR_IO', `cannot write the header of ${o.path}: ${(e as Error).message}`, { cause: e });
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Appends and sealing

  append(id: number, fpLo: number, fpHi: number, codec: number, src: Uint8Array, off: number, len: number): AppendResult {
    const r = this.room(recordSpan(len), false);
    if (r !== 'ok') return r;
    encodeRecord(this.bufs[this.cur]!, this.curUsed, id, fpLo, fpHi, codec, src, off, len);
    this.segNew[this.curSeg]! += recordSpan(len);
    this.appended(recordSpan(len));
    return 'ok';
  }

  /** The cleaner's append: the record b[at, at+span) is copied verbatim (header, checksums and all). */
  private appendCopy(b: Uint8Array, at: number, span: number): AppendResult {
    const r = this.room(span, true);
    if (r !== 'ok') return r;
    this.bufs[this.cur]!.set(b.subarray(at, at + span), this.curUsed);
    this.appended(span);
    this.c.disk_record_bytes_appended -= span; // not new data: counted as the cleaner's
    this.c.disk_cleaner_bytes_moved += span;
    return 'ok';
  }

  /** Makes sure the open segment has `span` bytes free, opening a new one if needed. */
  private room(span: number, cleaner: boolean): AppendResult {
    if (this.closed || (this.failing && !cleaner)) return 'failed';
    if (this.cur >= 0 && this.curUsed + span <= this.segmentSize) return 'ok';
    return this.openSegment(cleaner);
  }

  private appended(span: number): void {
    this.lastW0 = this.curSeg;
    this.lastW1 = this.curUsed;
    this.curUsed += span;
    this.curRecords++;
    this.segUsed[this.curSeg] = this.curUsed;
    this.segLive[this.curSeg]! += span;
    this.c.disk_live_bytes += span;
    this.c.disk_used_bytes += span;
    this.c.disk_record_bytes_appended += span;
  }

  /** Seals the open segment (if any) and opens a new one in a free buffer. */
  private openSegment(cleaner: boolean): AppendResult {
    // Check for room before sealing, so a refused append leaves the open segment as it was.
    if (this.bufFree.length === 0) {
      // The open segment cannot take this record, and no buffer is free for a new one: write it
      // now, so its buffer comes back (else a cleaner rescue waiting for room could wait forever).
      if (this.cur >= 0 && this.curRecords > 0) this.seal();
      return 'busy';
    }
    if (this.freeCount <= (cleaner ? 0 : this.reserve)) {
      if (cleaner || !this.reclaimable()) return 'full';
      // The open segment is full anyway: sealing it now makes its garbage cleanable too.
      this.seal();
      return 'busy';
    }
    this.seal();
    const b = this.bufFree.pop()!;
    const s = this.freeWritten > 0 ? this.freeSegs[--this.freeWritten]! : this.freshSegs[--this.freshCount]!;
    this.inUse++;
    this.cur = b;
    this.curSeg = s;
    this.curUsed = SEG_HEADER_SIZE;
    this.curRecords = 0;
    this.segState[s] = OPEN;
    this.segBuf[s] = b;
    this.segUsed[s] = SEG_HEADER_SIZE;
    this.segLive[s] = 0;
    this.segNew[s] = 0;
    this.segDamaged[s] = 0;
    this.c.disk_used_bytes += SEG_HEADER_SIZE;
    return 'ok';
  }

  sealOpen(): boolean {
    if (this.cur < 0 || this.curRecords === 0) return false;
    this.seal();
    return true;
  }

  private seal(): void {
    if (this.cur < 0) return;
    const b = this.cur, s = this.curSeg;
    this.cur = -1;
    this.curSeg = -1;
    encodeSegHeader(this.bufs[b]!, s, this.curUsed, this.curRecords, this.seq++);
    this.segRecords[s] = this.curRecords;
    this.segState[s] = WRITING;
    this.write(s);
  }

  private write(s: number): void {
    const b = this.segBuf[s]!;
    const len = alignUp(this.segUsed[s]!);
    const pos = this.segPos(s);
    this.writesInFlight++;
    fs.write(this.fd, this.bufs[b]!, 0, len, pos, (err, n) => {
      this.writesInFlight--;
      if (err || n !== len) this.writeFailed(s, err ?? new Error(`short write: ${n} of ${len} bytes`));
      else this.written(s, len);
      if (this.writesInFlight === 0) for (const r of this.idleResolvers.splice(0)) r();
    });
  }

  private written(s: number, len: number): void {
    const b = this.segBuf[s]!;
    this.c.disk_bytes_written += len;
    this.c.disk_new_bytes_written += this.segNew[s]!;
    if (!this.direct) {
      // Written through the page cache: make it durable enough to drop, then drop it.
      const pos = this.segPos(s);
      fs.fdatasync(this.fd, () => { dropCached(this.fd, pos, len); });
    }
    this.segBuf[s] = -1;
    this.bufFree.push(b);
    this.segSealed[s] = Date.now();
    this.segState[s] = SEALED;
    this.segWritten[s] = 1;
    const i = this.stranded.indexOf(s);
    if (i >= 0) this.stranded.splice(i, 1);
    if (this.failing && this.stranded.length === 0) {
      this.failing = false;
      this.events('info', 'disk tier writes recovered', { path: this.path });
    }
    if (this.segLive[s] === 0) this.freeSegment(s);
    this.wake();
  }

  private writeFailed(s: number, err: Error): void {
    this.c.disk_write_errors++;
    this.segState[s] = STRANDED;
    if (!this.stranded.includes(s)) this.stranded.push(s);
    if (!this.failing) {
      this.failing = true;
      this.events('error', 'disk tier write failed: objects stay in RAM, writes to the tier are refused until a retry succeeds', {
        path: this.path, segment: s, cause: err, retry_ms: RETRY_MS,
      });
    }
    if (this.retryTimer === undefined && !this.closed) {
      this.retryTimer = setTimeout(() => {
        this.retryTimer = undefined;
        for (const t of this.stranded.slice()) {
          if (this.segState[t] !== STRANDED) continue;
          if (this.segLive[t] === 0) { this.dropStranded(t); continue; }
          this.segState[t] = WRITING;
          this.write(t);
        }
      }, RETRY_MS);
      this.retryTimer.unref();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Reads

  locateBuffered(w0: number, w1: number): boolean {
    const b = this.segBuf[w0]!;
    if (b < 0) return false;
    this.locBuf = this.bufs[b]!;
    this.locOff = w1 + REC_HEADER_SIZE;
    return true;
  }

  read(w0: number, w1: number, id: number, len: number, fpLo: number, fpHi: number, dst: Uint8Array, dstOff: number): Promise<void> {
    let start: number, end: number;
    try {
      if (this.readBuffered(w0, w1, id, len, fpLo, fpHi, dst, dstOff)) return Promise.resolve();
      start = this.spanStart(w0, w1);
      end = this.spanEnd(w0, w1, len);
    } catch (e) {
      return Promise.reject(e);
    }
    this.pin(w0);
    const rb = this.readBufs.pop() ?? alignedBuffer(this.readSpan);
    this.c.disk_reads++;
    return new Promise<void>((resolve, reject) => {
      fs.read(this.fd, rb, 0, end - start, start, (err, n) => {
        try {
          if (err) throw this.readError(w0, w1, err.message, err);
          this.readDone(rb, n, start, end, w0, w1, id, len, fpLo, fpHi, dst, dstOff);
          resolve();
        } catch (e) {
          reject(e);
        } finally {
          if (this.readBufs.length < READ_BUFFERS_KEPT) this.readBufs.push(rb);
          this.unpin(w0);
        }
      });
    });
  }

  readSync(w0: number, w1: number, id: number, len: number, fpLo: number, fpHi: number, dst: Uint8Array, dstOff: number): void {
    if (this.readBuffered(w0, w1, id, len, fpLo, fpHi, dst, dstOff)) return;
    const start = this.spanStart(w0, w1);
    const end = this.spanEnd(w0, w1, len);
    const rb = this.readBufs.pop() ?? alignedBuffer(this.readSpan);
    this.c.disk_reads++;
    try {
      let n: number;
      try {
        n = fs.readSync(this.fd, rb, 0, end - start, start);
      } catch (e) {
        throw this.readError(w0, w1, (e as Error).message, e);
      }
      this.readDone(rb, n, start, end, w0, w1, id, len, fpLo, fpHi, dst, dstOff);
    } finally {
      if (this.readBufs.length < READ_BUFFERS_KEPT) this.readBufs.push(rb);
    }
  }

  /** Serves a read from the segment's RAM buffer when it has one (true), else checks it can be read from the medium (false). */
  private readBuffered(w0: number, w1: number, id: number, len: number, fpLo: number, fpHi: number, dst: Uint8Array, dstOff: number): boolean {
    if (this.closed) throw new ZdedupError('ERR_CLOSED', 'disk tier is closed');
    const b = this.segBuf[w0]!;
    if (b >= 0) {
      this.checkAndCopy(this.bufs[b]!, w1, this.segUsed[w0]!, w0, w1, id, len, fpLo, fpHi, dst, dstOff);
      return true;
    }
    const st = this.segState[w0]!;
    if (st !== SEALED && st !== FREEING) throw this.readError(w0, w1, `segment is ${STATE_NAMES[st]}`);
    return false;
  }

  /** The aligned span [start, end) of the medium that holds the record at (w0, w1) of `len` payload bytes. */
  private spanStart(w0: number, w1: number): number {
    const pos = this.segPos(w0) + w1;
    return pos - (pos % ALIGN);
  }
  private spanEnd(w0: number, w1: number, len: number): number {
    return alignUp(this.segPos(w0) + w1 + REC_HEADER_SIZE + len);
  }

  /** After the span was read into rb: checks the length, drops cached pages, checks and copies the record. */
  private readDone(rb: Buffer, n: number, start: number, end: number, w0: number, w1: number, id: number, len: number,
    fpLo: number, fpHi: number, dst: Uint8Array, dstOff: number): void {
    if (n !== end - start) throw this.readError(w0, w1, `short read: ${n} of ${end - start} bytes`);
    if (!this.direct) dropCached(this.fd, start, end - start);
    this.checkAndCopy(rb, this.segPos(w0) + w1 - start, n, w0, w1, id, len, fpLo, fpHi, dst, dstOff);
  }

  /** Checks that b[at..] is object `id`'s record, then copies its payload out; throws ERR_DISK_READ. */
  private checkAndCopy(b: Uint8Array, at: number, limit: number, w0: number, w1: number, id: number, len: number,
    fpLo: number, fpHi: number, dst: Uint8Array, dstOff: number): void {
    const rv = this.rv;
    if (!readRecordHeader(b, at, limit, rv)) throw this.readError(w0, w1, 'bad record header');
    if (rv.len !== len || rv.id !== id || rv.fpLo !== fpLo || rv.fpHi !== fpHi) throw this.readError(w0, w1, 'record is not the expected object');
    if (!checkPayload(b, at, len)) throw this.readError(w0, w1, 'payload checksum mismatch');
    dst.set(b.subarray(at + REC_HEADER_SIZE, at + REC_HEADER_SIZE + len), dstOff);
  }

  private readError(w0: number, w1: number, why: string, cause?: unknown): ZdedupError {
    this.c.disk_read_errors++;
    return new ZdedupError('ERR_DISK_READ', `disk tier ${this.path}: segment ${w0} offset ${w1}: ${why}`, { cause });
  }

  pin(s: number): void {
    this.segReaders[s]!++;
  }

  unpin(s: number): void {
    if (--this.segReaders[s]! === 0 && this.segState[s] === FREEING) this.reallyFree(s);
  }

  // ---------------------------------------------------------------------------------------------
  // Release, free space, cleaning

  release(w0: number, w1: number, len: number): void {
    const span = recordSpan(len);
    this.segLive[w0]! -= span;
    this.c.disk_live_bytes -= span;
    if (this.segLive[w0] !== 0) return;
    if (this.segState[w0] === SEALED) this.freeSegment(w0);
    else if (this.segState[w0] === STRANDED) this.dropStranded(w0);
  }

  /**
   * A segment whose write failed and whose records are all released needs no write at all:
   * its buffer and segment are freed, and once none is left stranded the tier takes appends again
   * (e.g. a filesystem that filled up, after the client discarded what it had stored).
   */
  private dropStranded(s: number): void {
    const b = this.segBuf[s]!;
    this.segBuf[s] = -1;
    this.bufFree.push(b);
    this.stranded.splice(this.stranded.indexOf(s), 1);
    this.segState[s] = SEALED; // so freeSegment's accounting applies
    this.freeSegment(s);
    // Its write failed (often: the filesystem could not allocate that range): hand it out last.
    // Rare, so the O(n) shift is fine.
    if (this.segWritten[s] === 0 && this.segState[s] === FREE) {
      const i = this.freshSegs.subarray(0, this.freshCount).lastIndexOf(s);
      if (i > 0) { this.freshSegs.copyWithin(1, 0, i); this.freshSegs[0] = s; }
    }
    if (this.failing && this.stranded.length === 0) {
      this.failing = false;
      this.events('info', 'disk tier writes recovered: the failed segments held nothing live any more', { path: this.path });
    }
    this.wake();
  }

  private freeSegment(s: number): void {
    this.c.disk_used_bytes -= this.segUsed[s]!;
    this.segUsed[s] = 0;
    if (this.segReaders[s]! > 0) { this.segState[s] = FREEING; this.freeing++; return; }
    this.reallyFree(s);
  }

  private reallyFree(s: number): void {
    if (this.segState[s] === FREEING) this.freeing--;
    this.inUse--;
    this.segState[s] = FREE;
    if (this.segWritten[s] !== 0) this.freeSegs[this.freeWritten++] = s;
    else this.freshSegs[this.freshCount++] = s;
    this.wake();
  }

  /**
   * True when waiting can make room: segments hold garbage the cleaner can reclaim (from the
   * running totals, O(1): this is asked on every refused append), a freed segment waits for its
   * readers, or a write in flight will free a buffer.
   */
  private reclaimable(): boolean {
    const garbage = this.c.disk_used_bytes - this.c.disk_live_bytes - this.inUse * SEG_HEADER_SIZE;
    return garbage > 0 || this.freeing > 0 || this.writesInFlight > 0;
  }

  needsCleaning(): boolean {
    if (this.stranded.length > 0) return true; // segments to rescue
    const low = Math.max(this.reserve + 2, Math.ceil(this.segmentCount / 16));
    return this.freeCount < low;
  }

  cleaningCandidates(score: (live: number, used: number, ageSeconds: number) => number, max: number): number[] {
    for (const t of this.stranded) if (this.segState[t] === STRANDED) return [t]; // rescue first
    const now = Date.now();
    const best: { s: number; v: number }[] = []; // at most `max` entries (a handful), not per segment
    for (let s = 0; s < this.segmentCount; s++) {
      if (this.segState[s] !== SEALED || this.segDamaged[s] !== 0 || this.segReaders[s]! > 0) continue;
      const used = this.segUsed[s]!, live = this.segLive[s]!;
      if (live + SEG_HEADER_SIZE >= used) continue; // nothing to gain
      const v = score(live, used, (now - this.segSealed[s]!) / 1000);
      if (best.length < max) best.push({ s, v });
      else if (v > best[best.length - 1]!.v) best[best.length - 1] = { s, v };
      else continue;
      best.sort((a, b) => b.v - a.v);
    }
    return best.map((x) => x.s);
  }

  async clean(s: number, owner: CleaningOwner): Promise<CleanResult> {
    const r: CleanResult = { outcome: 'done', moved_records: 0, moved_bytes: 0 };
    if (!this.closed && this.segState[s] === STRANDED) return this.rescue(s, owner, r);
    if (this.closed || this.segState[s] !== SEALED) { r.outcome = 'gone'; return r; }
    const used = this.segUsed[s]!;
    const len = alignUp(used);
    this.cleanBuf ??= alignedBuffer(this.segmentSize);
    const b = this.cleanBuf;
    this.pin(s);
    try {
      const n = await new Promise<number>((resolve, reject) => {
        fs.read(this.fd, b, 0, len, this.segPos(s), (err, got) => (err ? reject(err) : resolve(got)));
      });
      if (!this.direct) dropCached(this.fd, this.segPos(s), len);
      if (n !== len || checkSegHeader(b, s, this.segmentSize) !== used) return this.damaged(s, r, 'segment header');
    } catch (e) {
      this.c.disk_read_errors++;
      return this.damaged(s, r, (e as Error).message);
    } finally {
      this.unpin(s);
    }
    if (this.segState[s] !== SEALED) { r.outcome = 'gone'; return r; } // freed while we read it
    if (!this.moveLive(b, s, used, owner, r, 'on disk')) return r;
    if (this.segLive[s] !== 0) {
      this.events('error', 'cleaner: live bytes left after a full walk (accounting bug); segment kept', { segment: s, live: this.segLive[s] });
      r.outcome = 'damaged';
      this.segDamaged[s] = 1;
      return r;
    }
    this.c.cleaned_segments++;
    this.freeSegment(s);
    return r;
  }

  /**
   * A segment whose write failed is emptied from its RAM buffer into other segments (preferring
   * ranges written before), so one bad range — a filesystem that cannot allocate it, a bad sector —
   * does not keep the tier failing. Synchronous: the buffer is in RAM.
   */
  private rescue(s: number, owner: CleaningOwner, r: CleanResult): CleanResult {
    if (!this.moveLive(this.bufs[this.segBuf[s]!]!, s, this.segUsed[s]!, owner, r, 'in RAM')) return r;
    if (this.segLive[s] === 0 && this.segState[s] === STRANDED) this.dropStranded(s);
    return r;
  }

  /**
   * Walks the records of segment s (its image b[0, used)), asks the owner about each, copies live
   * ones forward verbatim (checksums included: a payload that rotted on disk stays detectably bad)
   * and takes them off s's live bytes. False when it stopped: r.outcome says why (busy, damaged).
   */
  private moveLive(b: Uint8Array, s: number, used: number, owner: CleaningOwner, r: CleanResult, where: string): boolean {
    const rv = this.rv;
    for (let at = SEG_HEADER_SIZE; at < used && this.segLive[s] !== 0; at += recordSpan(rv.len)) {
      if (!readRecordHeader(b, at, used, rv)) { this.damaged(s, r, `record header at ${at} ${where}`); return false; }
      const what = owner.liveness(rv.id, s, at);
      if (what === 'dead') continue;
      const span = recordSpan(rv.len);
      if (what === 'move') {
        if (this.appendCopy(b, at, span) !== 'ok') { r.outcome = 'busy'; return false; }
        owner.relocated(rv.id, this.lastW0, this.lastW1);
        r.moved_records++;
        r.moved_bytes += span;
      }
      this.segLive[s]! -= span;
      this.c.disk_live_bytes -= span;
    }
    return true;
  }

  private damaged(s: number, r: CleanResult, why: string): CleanResult {
    this.segDamaged[s] = 1;
    this.events('error', 'cleaner: segment unreadable, left as it is (its objects read as EIO)', { path: this.path, segment: s, why });
    r.outcome = 'damaged';
    return r;
  }

  whenWritable(): Promise<void> {
    if (this.closed) return Promise.reject(new ZdedupError('ERR_CLOSED', 'disk tier is closed'));
    return new Promise((resolve) => { this.waiters.push(resolve); });
  }

  private wake(): void {
    if (this.waiters.length === 0) return;
    for (const w of this.waiters.splice(0)) w();
  }

  // ---------------------------------------------------------------------------------------------
  // Stats, tests, closing

  stats(): TierStats {
    const used = this.inUse;
    return {
      backing_size: this.backingSize,
      disk_bytes: this.c.disk_used_bytes,
      disk_live_bytes: this.c.disk_live_bytes,
      disk_segments: used,
      disk_free_segments: this.freeCount,
      disk_bytes_written: this.c.disk_bytes_written,
      disk_record_bytes_appended: this.c.disk_record_bytes_appended,
      disk_cleaner_bytes_moved: this.c.disk_cleaner_bytes_moved,
      write_amplification: this.c.disk_new_bytes_written > 0 ? this.c.disk_bytes_written / this.c.disk_new_bytes_written : 1,
      cleaned_segments: this.c.cleaned_segments,
      disk_write_errors: this.c.disk_write_errors,
      disk_read_errors: this.c.disk_read_errors,
      disk_reads: this.c.disk_reads,
      ...NO_REMOTE_STATS,
    };
  }

  /** Test hook: flips a payload byte of the record at (w0, w1), in its buffer or on the medium. */
  corruptForTest(w0: number, w1: number): void {
    const b = this.segBuf[w0]!;
    if (b >= 0) { this.bufs[b]![w1 + REC_HEADER_SIZE]! ^= 0x5a; return; }
    const pos = this.segPos(w0) + w1;
    const start = pos - (pos % ALIGN);
    const rb = alignedBuffer(2 * ALIGN);
    fs.readSync(this.fd, rb, 0, 2 * ALIGN, start);
    rb[pos - start + REC_HEADER_SIZE]! ^= 0x5a;
    fs.writeSync(this.fd, rb, 0, 2 * ALIGN, start);
  }

  /** White-box check: live and used bytes agree with the per-segment columns. */
  checkInvariants(): void {
    let live = 0, used = 0;
    for (let s = 0; s < this.segmentCount; s++) {
      const st = this.segState[s]!;
      if (st === FREE || st === FREEING) {
        if (this.segLive[s] !== 0 && st === FREE) throw new Error(`free segment ${s} has live bytes`);
        continue;
      }
      live += this.segLive[s]!;
      used += this.segUsed[s]!;
      if (this.segLive[s]! > this.segUsed[s]!) throw new Error(`segment ${s}: live ${this.segLive[s]} > used ${this.segUsed[s]}`);
      if ((this.segBuf[s]! >= 0) !== (st === OPEN || st === WRITING || st === STRANDED)) throw new Error(`segment ${s}: buffer and state ${STATE_NAMES[st]} disagree`);
    }
    let inUse = 0;
    for (let s = 0; s < this.segmentCount; s++) if (this.segState[s] !== FREE) inUse++;
    if (inUse !== this.inUse) throw new Error(`segments in use ${this.inUse} != ${inUse}`);
    if (inUse + this.freeCount !== this.segmentCount) throw new Error(`in use ${inUse} + free ${this.freeCount} != ${this.segmentCount}`);
    if (live !== this.c.disk_live_bytes) throw new Error(`disk_live_bytes ${this.c.disk_live_bytes} != ${live}`);
    if (used !== this.c.disk_used_bytes) throw new Error(`disk_bytes ${this.c.disk_used_bytes} != ${used}`);
  }

  /** Live bytes the tier holds for segment s (white-box tests). */
  segmentLive(s: number): number { return this.segLive[s]!; }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.writesInFlight > 0) await new Promise<void>((r) => { this.idleResolvers.push(r); });
    for (const w of this.waiters.splice(0)) w();
    fs.closeSync(this.fd);
  }

  private segPos(s: number): number {
    return FILE_HEADER_SIZE + s * this.segmentSize;
  }
}

/** Opens (creating or resizing a file as asked) with O_DIRECT when wanted and possible. */
/** Refuses (closing fd) a backing whose first block is neither zeroes nor a zdedup file header. */
function checkOurs(fd: number, path: string): void {
  const b = alignedBuffer(FILE_HEADER_SIZE);
  let n: number;
  try {
    n = fs.readSync(fd, b, 0, FILE_HEADER_SIZE, 0);
  } catch (e) {
    fs.closeSync(fd);
    throw new ZdedupError('ERR_IO', `cannot read the start of backing ${path}: ${(e as Error).message}`, { cause: e });
  }
  const head = b.subarray(0, n);
  if (head.every((x) => x === 0) || (n >= 4 && head.readUInt32LE(0) === FILE_MAGIC)) return;
  fs.closeSync(fd);
  throw new ZdedupError('ERR_INVALID_ARGUMENT',
    `backing ${path} holds other data (no zdedup header and not zeroes): refusing to overwrite it; pass --backing-overwrite if it is really meant to be used`);
}

function openBacking(path: string, size: number | undefined, direct: boolean): { fd: number; size: number; direct: boolean; existed: boolean } {
  const C = fs.constants;
  let st: fs.Stats | undefined;
  try { st = fs.statSync(path); } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new ZdedupError('ERR_IO', `cannot stat backing ${path}: ${(e as Error).message}`, { cause: e });
  }
  if (st === undefined && size === undefined) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', `backing ${path} does not exist: give its size (--backing-size) to create it`);
  }
  if (st !== undefined && !st.isFile() && !st.isBlockDevice()) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', `backing ${path} is neither a regular file nor a block device`);
  }
  const flags = C.O_RDWR | C.O_CREAT; // libuv adds O_CLOEXEC itself
  let fd: number;
  let isDirect = false;
  try {
    if (direct) {
      try {
        fd = fs.openSync(path, flags | C.O_DIRECT, 0o600);
        isDirect = true;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
        fd = fs.openSync(path, flags, 0o600);
      }
    } else {
      fd = fs.openSync(path, flags, 0o600);
    }
  } catch (e) {
    throw new ZdedupError('ERR_IO', `cannot open backing ${path}: ${(e as Error).message}`, { cause: e });
  }
  let bytes: number;
  if (st?.isBlockDevice() === true) {
    bytes = deviceOrFileSize(fd);
  } else {
    if (size !== undefined && (st === undefined || st.size !== size)) {
      try { fs.ftruncateSync(fd, size); } catch (e) {
        fs.closeSync(fd);
        throw new ZdedupError('ERR_IO', `cannot size backing ${path} to ${size} bytes: ${(e as Error).message}`, { cause: e });
      }
    }
    bytes = size ?? st!.size;
  }
  return { fd, size: bytes, direct: isDirect, existed: st !== undefined && (st.isBlockDevice() || st.size > 0) };
}
