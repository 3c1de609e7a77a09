/**
 * ContentIndex: the set of distinct page contents seen so far in a scan, as 128-bit
 * fingerprints in one open-addressing hash table of parallel typed arrays (no object per entry).
 *
 *   cell i (capacity a power of two, linear probing from fp.a & mask, load <= 0.7):
 *     fp      u32 x4   XXH3-128 of the content            (16 B)
 *     count   u32      pages seen with it; 0 = empty cell (4 B)
 *     first   u32      source id where it first occurred  (4 B)
 *     last    u32      source id where it last occurred   (4 B)   -> 28 B per cell
 *
 * Sources are scanned one after another, so `last == current source` says exactly whether the
 * current source has seen the content before: that splits duplicates into within-source and
 * cross-source without a per-source set.
 *
 * Memory is bounded: the table doubles while the new capacity fits `maxBytes` (the old table is
 * freed after the rehash, so the peak is 1.5x the new size). When it is full at its largest
 * size, new contents are not remembered: `observe` returns FULL, the caller counts the page as
 * unique (so duplicates are then undercounted, never overcounted) and reports it.
 *
 * No deletion: a scan only adds. Entries are never moved except by a rehash, and callers keep no
 * cell numbers across calls.
 */

/** observe() outcomes. */
export const NEW = 0;          // first occurrence in the scan (inserted)
export const DUP_WITHIN = 1;   // seen before in the current source
export const DUP_CROSS = 2;    // seen before, but only in earlier sources
export const FULL = 3;         // not found and the table is full: not remembered
export type Observation = typeof NEW | typeof DUP_WITHIN | typeof DUP_CROSS | typeof FULL;

const MAX_LOAD = 0.7;
export const BYTES_PER_CELL = 28;
const MIN_CAPACITY = 1 << 12;

export class ContentIndex {
  private fp: Uint32Array;
  private cnt: Uint32Array;
  private first: Uint32Array;
  private last: Uint32Array;
  private mask: number;
  private limit: number;
  private readonly maxCapacity: number;
  /** Distinct contents held. */
  size = 0;
  /** After observe(): the content's count (incl. this page) and the source it first occurred in. */
  count = 0;
  firstSource = 0;

  constructor(maxBytes: number) {
    let maxCap = MIN_CAPACITY;
    while (maxCap * 2 * BYTES_PER_CELL <= maxBytes) maxCap *= 2;
    this.maxCapacity = maxCap;
    const cap = Math.min(maxCap, 1 << 16);
    this.fp = new Uint32Array(cap * 4);
    this.cnt = new Uint32Array(cap);
    this.first = new Uint32Array(cap);
    this.last = new Uint32Array(cap);
    this.mask = cap - 1;
    this.limit = Math.floor(cap * MAX_LOAD);
  }

  get capacity(): number { return this.mask + 1; }
  bytes(): number { return this.capacity * BYTES_PER_CELL; }
  /** Largest number of distinct contents this index can remember. */
  get maxContents(): number { return Math.floor(this.maxCapacity * MAX_LOAD); }

  /**
   * Records one page with fingerprint (a, b, c, d) seen in `source`. Sets this.count and
   * this.firstSource for NEW / DUP_* outcomes.
   */
  observe(a: number, b: number, c: number, d: number, source: number): Observation {
    const fp = this.fp, cnt = this.cnt, mask = this.mask;
    let i = a & mask;
    for (;;) {
      const n = cnt[i]!;
      if (n === 0) break;
      const k = i << 2;
      if (fp[k] === a && fp[k + 1] === b && fp[k + 2] === c && fp[k + 3] === d) {
        cnt[i] = n + 1;
        this.count = n + 1;
        this.firstSource = this.first[i]!;
        if (this.last[i] === source) return DUP_WITHIN;
        this.last[i] = source;
        return DUP_CROSS;
      }
      i = (i + 1) & mask;
    }
    if (this.size >= this.limit) {
      if (this.capacity >= this.maxCapacity) return FULL;
      this.rehash(this.capacity * 2);
      i = a & this.mask;
      while (this.cnt[i] !== 0) i = (i + 1) & this.mask;
    }
    const k = i << 2;
    this.fp[k] = a; this.fp[k + 1] = b; this.fp[k + 2] = c; this.fp[k + 3] = d;
    this.cnt[i] = 1;
    this.first[i] = source;
    this.last[i] = source;
    this.size++;
    this.count = 1;
    this.firstSource = source;
    return NEW;
  }

  private rehash(cap: number): void {
    const ofp = this.fp, ocnt = this.cnt, ofirst = this.first, olast = this.last;
    const fp = new Uint32Array(cap * 4), cnt = new Uint32Array(cap);
    const first = new Uint32Array(cap), last = new Uint32Array(cap);
    const mask = cap - 1;
    for (let j = 0; j < ocnt.length; j++) {
      const n = ocnt[j]!;
      if (n === 0) continue;
      const k = j << 2;
      let i = ofp[k]! & mask;
      while (cnt[i] !== 0) i = (i + 1) & mask;
      const m = i << 2;
      fp[m] = ofp[k]!; fp[m + 1] = ofp[k + 1]!; fp[m + 2] = ofp[k + 2]!; fp[m + 3] = ofp[k + 3]!;
      cnt[i] = n; first[i] = ofirst[j]!; last[i] = olast[j]!;
    }
    this.fp = fp; this.cnt = cnt; this.first = first; this.last = last;
    this.mask = mask;
    this.limit = Math.floor(cap * MAX_LOAD);
  }

  /** White-box check for tests: every entry is reachable from its home cell without a gap. */
  checkInvariants(): void {
    let seen = 0;
    for (let j = 0; j <= this.mask; j++) {
      if (this.cnt[j] === 0) continue;
      seen++;
      let i = this.fp[j << 2]! & this.mask;
      while (i !== j) {
        if (this.cnt[i] === 0) throw new Error(`cell ${j} unreachable: gap at ${i}`);
        i = (i + 1) & this.mask;
      }
    }
    if (seen !== this.size) throw new Error(`size ${this.size} but ${seen} cells in use`);
  }
}
