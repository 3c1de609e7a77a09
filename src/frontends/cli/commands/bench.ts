/**
 * `zdedup bench --file PAGES`: streams a raw file of pages through a PageStore (one area, page i
 * at offset i), reads every page back and checks it against the file, and prints store and load
 * throughput, every store stat, and the no-dedup baseline: the same file compressed page by page
 * with the codec alone. Exit 1 if any page read back differs.
 *
 * Timings cover only the store / load / codec calls, not the file reads (the file is read in
 * 1 MiB chunks into one reused buffer).
 */
import type { Command } from 'commander';
import { closeSync, openSync, readSync } from 'node:fs';
import { PageStore, type PageStoreStats } from '../../../core/page-store.js';
import { ZdedupError } from '../../../core/errors.js';
import { parseCodec } from '../../../engine/codec/codec.js';
import { isSameFilled } from '../../../engine/codec/same-filled.js';
import { Fingerprinter } from '../../../engine/dedup/fingerprint.js';
import { deviceOrFileSize } from '../../../analyze/file-source.js';
import type { Ctx } from '../main.js';

export interface FileBenchResult extends PageStoreStats {
  file: string;
  pages: number;
  codec: string;
  /** MB/s (10^6 bytes) of pages stored, and of pages loaded. */
  store_mbps: number;
  load_mbps: number;
  /** Pages whose read-back differed from the file (must be 0). */
  mismatched_pages: number;
  /** Codec alone: every page compressed on its own, no same-filled or dedup handling. */
  codec_alone_bytes: number;
  codec_alone_mbps: number;
  /** Codec alone: decompressing those pages again (0 for 'none'). */
  codec_alone_decompress_mbps: number;
  codec_alone_ratio: number;
  /** Codec alone over the distinct, non-same-filled pages (a page not saving 1/8 counted raw). */
  codec_alone_distinct_bytes: number;
  /** (pool_total_size + metadata_bytes) / codec_alone_distinct_bytes: allocator + metadata overhead. */
  overhead_ratio: number;
  /** (pool_total_size + metadata_bytes) / stored pages. */
  bytes_per_stored_page: number;
  metadata_bytes_per_page: number;
  /** metadata_bytes / unique_objects, the per-object metadata cost. */
  metadata_bytes_per_object: number;
}

const CHUNK_PAGES = 256;

function timed(fn: () => void): number {
  const t = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t) / 1e9;
}

function readChunk(fd: number, buf: Buffer, pos: number): number {
  let got = 0;
  while (got < buf.length) {
    const n = readSync(fd, buf, got, buf.length - got, pos + got);
    if (n === 0) break;
    got += n;
  }
  return got;
}

export function runFileBench(file: string, opts: { codec?: string; pageSize?: number; onProgress?: (done: number, total: number) => void } = {}): FileBenchResult {
  const pageSize = opts.pageSize ?? 4096;
  const store = new PageStore({ codec: opts.codec ?? 'lz4', pageSize }); // validates codec and page size first
  let fd: number;
  try { fd = openSync(file, 'r'); } catch (e) { throw new ZdedupError('ERR_IO', `cannot open ${file}: ${(e as Error).message}`, { cause: e }); }
  try {
    const size = deviceOrFileSize(fd); // block devices report their size through sysfs
    if (size === 0 || size % pageSize !== 0) {
      throw new ZdedupError('ERR_PAGE_LENGTH', `${file}: size ${size} is not a non-zero multiple of the page size ${pageSize} (a regular file or block device is needed)`);
    }
    const pages = size / pageSize;
    const area = store.createArea('bench', pages);
    const buf = Buffer.alloc(CHUNK_PAGES * pageSize);
    const out = Buffer.alloc(CHUNK_PAGES * pageSize);

    let storeSec = 0;
    for (let p = 0; p < pages; p += CHUNK_PAGES) {
      const n = Math.min(CHUNK_PAGES, pages - p);
      readChunk(fd, buf.subarray(0, n * pageSize), p * pageSize);
      const chunk = buf.subarray(0, n * pageSize);
      let stored = 0;
      storeSec += timed(() => { stored = store.storeBatch(area, p, chunk); });
      if (stored !== n) throw new ZdedupError('ERR_IO', `store rejected page ${p + stored}: ${store.lastReject}`);
      opts.onProgress?.(p + n, pages * 3);
    }

    let loadSec = 0;
    let mismatched = 0;
    for (let p = 0; p < pages; p += CHUNK_PAGES) {
      const n = Math.min(CHUNK_PAGES, pages - p);
      loadSec += timed(() => { store.loadBatch(area, p, n, out); });
      readChunk(fd, buf.subarray(0, n * pageSize), p * pageSize);
      if (!buf.subarray(0, n * pageSize).equals(out.subarray(0, n * pageSize))) {
        for (let i = 0; i < n; i++) {
          if (buf.compare(out, i * pageSize, (i + 1) * pageSize, i * pageSize, (i + 1) * pageSize) !== 0) mismatched++;
        }
      }
      opts.onProgress?.(pages + p + n, pages * 3);
    }

    // Baseline: the codec alone, page by page (timed per chunk, like the store), then the
    // accounting of same-filled and distinct pages outside the timed part.
    const codec = parseCodec(opts.codec ?? 'lz4');
    const cbuf = Buffer.alloc(CHUNK_PAGES * pageSize * 2);
    const lens = new Int32Array(CHUNK_PAGES);
    const dec = Buffer.alloc(pageSize);
    const fp = new Fingerprinter();
    const seen = new Set<bigint>(); // bench-only: one entry per distinct page (not the store's hot path)
    let aloneBytes = 0, distinctBytes = 0, codecSec = 0, decSec = 0;
    const cap = pageSize - pageSize / 8;
    for (let p = 0; p < pages; p += CHUNK_PAGES) {
      const n = Math.min(CHUNK_PAGES, pages - p);
      readChunk(fd, buf.subarray(0, n * pageSize), p * pageSize);
      codecSec += timed(() => {
        for (let i = 0; i < n; i++) {
          const page = buf.subarray(i * pageSize, (i + 1) * pageSize);
          lens[i] = codec.compress(page, pageSize, cbuf.subarray(i * 2 * pageSize), 2 * pageSize);
        }
      });
      if (codec.name !== 'none') {
        decSec += timed(() => {
          for (let i = 0; i < n; i++) codec.decompress(cbuf.subarray(i * 2 * pageSize), lens[i]!, dec, pageSize);
        });
      }
      for (let i = 0; i < n; i++) {
        const page = buf.subarray(i * pageSize, (i + 1) * pageSize);
        const len = lens[i]! === 0 ? pageSize : lens[i]!; // 'none' compresses nothing
        aloneBytes += len;
        if (isSameFilled(page, pageSize)) continue;
        fp.hash(page, pageSize);
        const key = (BigInt(fp.hi) << 32n) | BigInt(fp.lo);
        if (seen.has(key)) continue;
        seen.add(key);
        distinctBytes += len <= cap ? len : pageSize;
      }
      opts.onProgress?.(2 * pages + p + n, pages * 3);
    }

    const s = store.stats();
    const held = s.pool_total_size + s.metadata_bytes;
    return {
      file, pages, codec: store.codec.spec,
      store_mbps: size / storeSec / 1e6,
      load_mbps: size / loadSec / 1e6,
      mismatched_pages: mismatched,
      ...s,
      codec_alone_bytes: aloneBytes,
      codec_alone_mbps: size / codecSec / 1e6,
      codec_alone_decompress_mbps: decSec > 0 ? size / decSec / 1e6 : 0,
      codec_alone_ratio: size / aloneBytes,
      codec_alone_distinct_bytes: distinctBytes,
      overhead_ratio: distinctBytes > 0 ? held / distinctBytes : 0,
      bytes_per_stored_page: held / pages,
      metadata_bytes_per_page: s.metadata_bytes / pages,
      metadata_bytes_per_object: s.unique_objects > 0 ? s.metadata_bytes / s.unique_objects : 0,
    };
  } finally {
    closeSync(fd);
  }
}

function fmt(n: number): string {
  return Number.isInteger(n) ? String(n) : n.toFixed(3);
}

export function registerBench(program: Command, ctx: Ctx): void {
  program
    .command('bench')
    .description('measure the page store on a raw file of pages: throughput, every stat, and the codec-alone baseline')
    .requiredOption('--file <path>', 'raw file of pages or a block device (size a multiple of the page size)')
    .option('--codec <codec>', 'lz4 | zstd[:LEVEL] | none', 'lz4')
    .option('--page-size <bytes>', 'page size, a power of two from 4096 to 65536', '4096')
    .option('--json', 'print one JSON object')
    .addHelpText('after', '\nExample:\n  zdedup bench --file /tmp/image.pages --codec zstd:3 --json\n\nExit status: 0 ok, 1 a page read back differed, 2 bad input.')
    .action((o: { file: string; codec: string; pageSize: string; json?: boolean }) => {
      const pageSize = Number(o.pageSize);
      const tty = process.stderr.isTTY && !o.json;
      const r = runFileBench(o.file, {
        codec: o.codec, pageSize,
        onProgress: tty ? (d, t) => { if (d % 4096 === 0 || d === t) process.stderr.write(`\r${((100 * d) / t).toFixed(0)}%`); } : undefined,
      });
      if (tty) process.stderr.write('\r    \r');
      if (o.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
      else {
        const w = Math.max(...Object.keys(r).map((k) => k.length));
        for (const [k, v] of Object.entries(r)) process.stdout.write(`${k.padEnd(w)}  ${typeof v === 'number' ? fmt(v) : v}\n`);
      }
      if (r.mismatched_pages > 0) {
        process.stderr.write(`zdedup: ${r.mismatched_pages} pages read back differ\n`);
        ctx.exitCode = 1;
      }
    });
}
