/**
 * Analyzer: classifies and measures pages in batches, for any source (process, file, device).
 *
 * A reader fills `batch` (batchPages x pageSize bytes, reused) with n whole pages and calls
 * processBatch(n). Each batch goes through three timed stages, so the CPU cost of each
 * technique is measured on the pages it would touch:
 *
 *   1. same-filled check (every page)           isSameFilled, as the store does
 *   2. fingerprint + index (pages not same-filled) XXH3-128 -> ContentIndex.observe
 *        -> NEW (first in scan) | DUP_WITHIN (seen earlier in this source)
 *           | DUP_CROSS (seen earlier only in other sources) | FULL (index full: counted unique)
 *   3. per codec: compress the unique pages (timed), the duplicates (timed apart), then the
 *      same-filled pages (size cached per word; their cost is calibrated once, see finish()).
 *
 * Counting definitions (docs/ANALYZE.md):
 *   same-filled page  one 8-byte word repeated over the page (the zero page included)
 *   duplicate page    not same-filled, and its content occurred earlier in the scan
 *   stored size       compressed length with capacity 7/8 page, else the page size
 *                     (a page that does not save 1/8 is kept raw, as in the store and zswap)
 *
 * Per-batch counts go into a delta array (one Float64Array, no object per page), then into the
 * current source's stats and, when a reader asked for it, the current mapping's.
 */
import { parseCodec, type Codec } from '../engine/codec/codec.js';
import { nativeZstd } from '../engine/codec/native.js';
import { isSameFilled, wordHi, wordLo } from '../engine/codec/same-filled.js';
import { Fingerprinter128 } from '../engine/dedup/fingerprint128.js';
import { buildClassTable } from '../engine/alloc/size-class.js';
import { ContentIndex, NEW, DUP_WITHIN, DUP_CROSS } from './content-index.js';
import { PairCounter, SameFilledWords, TopContents } from './tables.js';

// ---- statistics layout ----------------------------------------------------------------------
// One Float64Array per source, per mapping and for the batch delta: fixed fields, then one block
// of CODEC_FIELDS per codec.

export const S = {
  PAGES: 0,             // pages analysed
  ZERO: 1,              // same-filled with the zero word
  SAME_FILLED: 2,       // same-filled, zero included
  DUP_WITHIN: 3,        // duplicate of a page earlier in the same source
  DUP_CROSS: 4,         // duplicate of a page seen only in earlier sources
  UNIQUE: 5,            // first occurrence in the scan (incl. INDEX_FULL)
  INDEX_FULL: 6,        // first occurrence not remembered: the index was full
  SWAPPED: 7,           // process page swapped out: not read
  NOT_ANON: 8,          // resident page of a private mapping that is file or shmem backed: not read
  SHARED_FRAME: 9,      // anonymous page whose physical frame was already counted (fork COW, KSM)
  ZERO_PAGE_MAPPING: 10, // mapped to the kernel's shared zero page: costs no memory, not read
  READ_ERROR: 11,       // wanted page that could not be read from /proc/PID/mem
  HEADER: 12,           // swap-image header page, not analysed
  TAIL_BYTES: 13,       // bytes after the last whole page of a file
} as const;
const FIXED_FIELDS = 14;

export const C = {
  ALL_DATA: 0, ALL_ALLOC: 1,       // every page (compression only)
  DATA_DATA: 2, DATA_ALLOC: 3,     // pages not same-filled (compression + same-filled)
  SRC_DATA: 4, SRC_ALLOC: 5,       // first occurrence in its source (zdedup, per-source domain)
  SCAN_DATA: 6, SCAN_ALLOC: 7,     // first occurrence in the scan (zdedup, one shared domain)
  INCOMPRESSIBLE: 8,               // pages not same-filled that do not save 1/8
} as const;
export const CODEC_FIELDS = 9;

/** Timing slots (ms, Float64Array): stage 1, stage 2, then per codec unique/duplicate/same-filled calibration. */
const T_SF = 0, T_FP = 1;

const K_SF = 0, K_NEW = 1, K_WITHIN = 2, K_CROSS = 3, K_FULL = 4;

export interface AnalyzerOptions {
  /** Bytes per page: a power of two, 4096..65536. */
  pageSize: number;
  /** Codecs to measure, in report order (parsed with parseCodec). */
  codecs: Codec[];
  /** Upper bound of the content index, bytes. */
  indexBytes: number;
  /** Pages per batch (reader read size = batchPages x pageSize). Default 256. */
  batchPages?: number;
  /** Most repeated contents kept with a preview. Default 16. */
  topContents?: number;
  /** Project the cold tier: lz4 hot, distinct compressible pages zstd-compressed N at a time in scan order (null: off). */
  cold?: { level: number; groupPages: number } | null;
}

/**
 * The cold tier's projection, one shared dedup domain: every distinct page (first in the scan)
 * that lz4 shrinks goes cold — grouped with the next ones in scan order, N per zstd frame, as the
 * store's cold pass groups objects in id (store) order; the others stay hot, raw. This is the
 * settled state: every object idle for --cold-after.
 */
export class ColdProjection {
  /** Distinct pages grouped, and kept hot (lz4 cannot save 1/8: stored raw, never tried with zstd). */
  groupedPages = 0;
  hotPages = 0;
  /** Bytes of zstd frames, and of the hot pages (raw) with their allocator share. */
  frameBytes = 0;
  hotAllocBytes = 0;
  groups = 0;
  /** ms spent recompressing (zstd of the frames). */
  ms = 0;
  private readonly buf: Uint8Array;
  private readonly out: Uint8Array;
  private k = 0;
  private readonly lz4 = parseCodec('lz4');
  private readonly zstd = nativeZstd();

  constructor(readonly level: number, readonly groupPages: number, private readonly P: number) {
    this.buf = new Uint8Array(groupPages * P);
    this.out = new Uint8Array(groupPages * P + ((groupPages * P) >>> 7) + 1024);
  }

  /** A distinct page of the scan (scratch: >= 2 pages of workspace). */
  add(page: Uint8Array, scratch: Uint8Array, cap: number, alloc: Float64Array): void {
    if (this.lz4.compress(page, this.P, scratch, cap) === 0) { this.hotPages++; this.hotAllocBytes += alloc[this.P]!; return; }
    this.buf.set(page, this.k * this.P);
    if (++this.k === this.groupPages) this.flush();
  }

  /** Compresses the pages collected so far as one group (the scan's end writes a partial one). */
  flush(): void {
    if (this.k === 0) return;
    const t0 = performance.now();
    const n = this.zstd.compress(this.out, this.out.length, this.buf, this.k * this.P, this.level);
    this.ms += performance.now() - t0;
    if (n <= 0) throw new Error('zstd failed to compress a group into its bound');
    this.frameBytes += n;
    this.groupedPages += this.k;
    this.groups++;
    this.k = 0;
  }
}

export class Analyzer {
  readonly pageSize: number;
  readonly codecs: Codec[];
  readonly batchPages: number;
  readonly fields: number;
  /** The reader's page buffer. */
  readonly batch: Uint8Array;
  readonly index: ContentIndex;
  readonly words: SameFilledWords;
  readonly pairs = new PairCounter();
  readonly top: TopContents;
  /** ms per stage; [T_SF, T_FP, then per codec k: 2+3k unique, 3+3k duplicates, 4+3k same-filled per page (calibrated)]. */
  readonly timing: Float64Array;
  /** Stats of each source, by source id. */
  readonly sourceStats: Float64Array[] = [];

  private readonly views: Uint8Array[];
  private readonly kind: Uint8Array;
  private readonly cell: Int32Array;
  private readonly lens: Int32Array;
  private readonly delta: Float64Array;
  private readonly scratch: Uint8Array;
  private readonly fp = new Fingerprinter128();
  /** Allocated bytes per stored length 1..P: size class, zspage tail and arena tail shared per object. */
  private readonly allocCost: Float64Array;
  private readonly cap: number;
  private source = -1;
  private mapping: Float64Array | null = null;
  /** The cold tier's projection (totals only), or null. */
  readonly cold: ColdProjection | null;

  constructor(o: AnalyzerOptions) {
    const P = o.pageSize;
    this.pageSize = P;
    this.codecs = o.codecs;
    this.batchPages = o.batchPages ?? 256;
    this.fields = FIXED_FIELDS + CODEC_FIELDS * o.codecs.length;
    this.batch = new Uint8Array(this.batchPages * P);
    this.views = [];
    for (let i = 0; i < this.batchPages; i++) this.views.push(this.batch.subarray(i * P, (i + 1) * P));
    this.kind = new Uint8Array(this.batchPages);
    this.cell = new Int32Array(this.batchPages);
    this.lens = new Int32Array(this.batchPages);
    this.delta = new Float64Array(this.fields);
    this.scratch = new Uint8Array(P * 2);
    this.cap = P - P / 8;
    this.index = new ContentIndex(o.indexBytes);
    this.words = new SameFilledWords(o.codecs.length);
    this.top = new TopContents(o.topContents ?? 16);
    this.timing = new Float64Array(2 + 3 * o.codecs.length);
    this.allocCost = allocatedBytesByLength(P);
    this.cold = o.cold ? new ColdProjection(o.cold.level, o.cold.groupPages, P) : null;
  }

  newStats(): Float64Array { return new Float64Array(this.fields); }

  /** Starts a source; returns its id. Its stats array is sourceStats[id]. */
  beginSource(): number {
    this.source = this.sourceStats.length;
    this.sourceStats.push(this.newStats());
    this.mapping = null;
    return this.source;
  }

  /** Also accumulate the following batches into `stats` (a per-mapping breakdown), or stop (null). */
  setMapping(stats: Float64Array | null): void { this.mapping = stats; }

  /** Adds a reader-side count (S.SWAPPED etc.) to the current source (and mapping). */
  count(field: number, n: number): void {
    this.sourceStats[this.source]![field]! += n;
    if (this.mapping) this.mapping[field]! += n;
  }

  /** Analyses pages [0, n) of `batch`. */
  processBatch(n: number): void {
    const P = this.pageSize, views = this.views, kind = this.kind, cell = this.cell;
    const d = this.delta, words = this.words, src = this.source, t = this.timing;
    d.fill(0);
    d[S.PAGES] = n;

    // 1. same-filled
    let t0 = performance.now();
    let sf = 0, zero = 0;
    for (let i = 0; i < n; i++) {
      const v = views[i]!;
      if (isSameFilled(v, P)) {
        const lo = wordLo(v), hi = wordHi(v);
        kind[i] = K_SF;
        sf++;
        if ((lo | hi) === 0) zero++;
        cell[i] = words.add(lo, hi);
      } else kind[i] = K_NEW;
    }
    let t1 = performance.now();
    t[T_SF]! += t1 - t0;
    d[S.SAME_FILLED] = sf;
    d[S.ZERO] = zero;

    // 2. fingerprint + index
    if (sf < n) {
      const fp = this.fp, index = this.index;
      let within = 0, cross = 0, unique = 0, full = 0;
      for (let i = 0; i < n; i++) {
        if (kind[i] === K_SF) continue;
        fp.hash(views[i]!, P);
        const r = index.observe(fp.a, fp.b, fp.c, fp.d, src);
        if (r === NEW) { unique++; continue; }
        if (r === DUP_WITHIN) { kind[i] = K_WITHIN; within++; }
        else if (r === DUP_CROSS) { kind[i] = K_CROSS; cross++; this.pairs.add(index.firstSource, src); }
        else { kind[i] = K_FULL; full++; continue; }
        this.top.bump(fp.a, fp.b, fp.c, fp.d, index.count, index.firstSource, views[i]!, P);
      }
      t0 = performance.now();
      t[T_FP]! += t0 - t1;
      d[S.DUP_WITHIN] = within; d[S.DUP_CROSS] = cross;
      d[S.UNIQUE] = unique + full; d[S.INDEX_FULL] = full;
    }

    // 3. compression, per codec
    const lens = this.lens, scratch = this.scratch, cap = this.cap, alloc = this.allocCost;
    const nc = this.codecs.length;
    for (let k = 0; k < nc; k++) {
      const codec = this.codecs[k]!;
      const b = FIXED_FIELDS + k * CODEC_FIELDS;
      if (sf < n) {
        t0 = performance.now();
        for (let i = 0; i < n; i++) {
          const q = kind[i];
          if (q === K_NEW || q === K_FULL) lens[i] = codec.compress(views[i]!, P, scratch, cap);
        }
        t1 = performance.now();
        for (let i = 0; i < n; i++) {
          const q = kind[i];
          if (q === K_WITHIN || q === K_CROSS) lens[i] = codec.compress(views[i]!, P, scratch, cap);
        }
        t[2 + 3 * k]! += t1 - t0;
        t[3 + 3 * k]! += performance.now() - t1;
      }
      let allD = 0, allA = 0, datD = 0, datA = 0, srcD = 0, srcA = 0, scanD = 0, scanA = 0, incompressible = 0;
      for (let i = 0; i < n; i++) {
        const q = kind[i]!;
        let len: number;
        if (q === K_SF) {
          const c = cell[i]!;
          if (c < 0) len = codec.compress(views[i]!, P, scratch, cap) || P;
          else {
            len = words.sizes[c * nc + k]!;
            if (len === 0) len = words.sizes[c * nc + k] = codec.compress(views[i]!, P, scratch, cap) || P;
          }
          allD += len; allA += alloc[len]!;
          continue;
        }
        len = lens[i]!;
        if (len === 0) { len = P; incompressible++; }
        const a = alloc[len]!;
        allD += len; allA += a; datD += len; datA += a;
        if (q !== K_WITHIN) { srcD += len; srcA += a; }
        if (q === K_NEW || q === K_FULL) { scanD += len; scanA += a; }
      }
      d[b + C.ALL_DATA] = allD; d[b + C.ALL_ALLOC] = allA;
      d[b + C.DATA_DATA] = datD; d[b + C.DATA_ALLOC] = datA;
      d[b + C.SRC_DATA] = srcD; d[b + C.SRC_ALLOC] = srcA;
      d[b + C.SCAN_DATA] = scanD; d[b + C.SCAN_ALLOC] = scanA;
      d[b + C.INCOMPRESSIBLE] = incompressible;
    }

    // 4. the cold tier: distinct pages (first in the scan) grouped in scan order
    const cold = this.cold;
    if (cold !== null && sf < n) {
      for (let i = 0; i < n; i++) if (kind[i] === K_NEW || kind[i] === K_FULL) cold.add(views[i]!, scratch, cap, alloc);
    }

    const s = this.sourceStats[src]!, m = this.mapping;
    for (let f = 0; f < d.length; f++) s[f]! += d[f]!;
    if (m) for (let f = 0; f < d.length; f++) m[f]! += d[f]!;
  }

  /**
   * Measures what compressing one same-filled page costs per codec (the zero page, 64 times):
   * the scan compresses each distinct word once, but "compression only" would compress every
   * such page. Call once after the scan (it also writes the cold projection's last, partial group).
   */
  calibrate(): void {
    this.cold?.flush();
    const P = this.pageSize, page = new Uint8Array(P);
    for (let k = 0; k < this.codecs.length; k++) {
      const codec = this.codecs[k]!;
      codec.compress(page, P, this.scratch, this.cap);
      const t0 = performance.now();
      for (let r = 0; r < 64; r++) codec.compress(page, P, this.scratch, this.cap);
      this.timing[4 + 3 * k] = (performance.now() - t0) / 64;
    }
  }
}

/** Index of codec k's block in a stats array. */
export function codecBase(k: number): number { return FIXED_FIELDS + k * CODEC_FIELDS; }

/**
 * Bytes the zsmalloc-style pool allocates per stored object of each length, from the store's
 * own size-class table (src/engine/alloc/size-class.ts): a zspage of k units holds `objs`
 * objects, and an arena of `arenaUnits` units holds floor(arenaUnits / k) zspages, so one object
 * costs (k*P + arena tail / zspages per arena) / objs. Assumes full zspages (no fragmentation).
 */
export function allocatedBytesByLength(P: number): Float64Array {
  const t = buildClassTable(P);
  const perClass = new Float64Array(t.count);
  for (let c = 0; c < t.count; c++) {
    const k = t.chain[c]!, objs = t.objsPerZspage[c]!;
    const perArena = Math.floor(t.arenaUnits / k);
    perClass[c] = (k * P + ((t.arenaUnits - perArena * k) * P) / perArena) / objs;
  }
  const out = new Float64Array(P + 1);
  for (let len = 1; len <= P; len++) out[len] = perClass[t.byStep[Math.ceil(len / t.step)]!]!;
  return out;
}
