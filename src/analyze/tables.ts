/**
 * The small tables of a scan, beside the ContentIndex:
 *
 * - SameFilledWords: same-filled pages by their 8-byte word (count per word), and the
 *   compressed size of such a page per codec, computed once per word (a same-filled page's size
 *   depends only on its word). Fixed capacity; words beyond it are counted as `otherPages` and
 *   compressed every time.
 * - PairCounter: pages of source b whose content first occurred in source a (a < b), keyed by
 *   the pair, in an open-addressing table. Bounded; pairs beyond it are counted in `dropped`.
 * - TopContents: the K most repeated contents so far, exact up to ties. Counts only grow by one
 *   at a time, so a content can enter the top K only at the moment its count exceeds the
 *   smallest count held; checking then (and comparing 4 words with K entries) keeps the K
 *   largest. Each entry keeps a preview of the content taken when it entered.
 *
 * All state is typed arrays indexed by a cell or entry number.
 */

// ---- same-filled words ----

const WORD_CAPACITY = 4096; // power of two
const WORD_LIMIT = 2048;

export class SameFilledWords {
  readonly lo = new Uint32Array(WORD_CAPACITY);
  readonly hi = new Uint32Array(WORD_CAPACITY);
  readonly pages = new Float64Array(WORD_CAPACITY);
  /** Stored size per (cell, codec); 0 = not yet computed. */
  readonly sizes: Int32Array;
  private readonly used = new Uint8Array(WORD_CAPACITY);
  size = 0;
  /** Same-filled pages whose word did not fit in the table. */
  otherPages = 0;

  constructor(readonly codecs: number) {
    this.sizes = new Int32Array(WORD_CAPACITY * codecs);
  }

  /** Counts one page of word (lo, hi); returns its cell, or -1 when the table is full. */
  add(lo: number, hi: number): number {
    let i = (Math.imul(lo ^ Math.imul(hi, 0x9e3779b1), 0x85ebca6b) >>> 20) & (WORD_CAPACITY - 1);
    for (;;) {
      if (this.used[i] === 0) break;
      if (this.lo[i] === lo && this.hi[i] === hi) { this.pages[i]!++; return i; }
      i = (i + 1) & (WORD_CAPACITY - 1);
    }
    if (this.size >= WORD_LIMIT) { this.otherPages++; return -1; }
    this.used[i] = 1; this.lo[i] = lo; this.hi[i] = hi; this.pages[i] = 1;
    this.size++;
    return i;
  }

  /** Cells in use, most pages first. */
  top(k: number): number[] {
    const cells: number[] = [];
    for (let i = 0; i < WORD_CAPACITY; i++) if (this.used[i]) cells.push(i);
    cells.sort((x, y) => this.pages[y]! - this.pages[x]!);
    return cells.slice(0, k);
  }
}

// ---- source pairs ----

const PAIR_LIMIT = 1 << 20;

export class PairCounter {
  private a = new Uint32Array(1024);
  private b = new Uint32Array(1024);
  private n = new Float64Array(1024);
  private mask = 1023;
  size = 0;
  /** Page counts not recorded because the table reached PAIR_LIMIT pairs. */
  dropped = 0;

  add(a: number, b: number): void {
    let i = (Math.imul(a, 0x9e3779b1) ^ Math.imul(b + 1, 0x85ebca6b)) >>> 0;
    i = (i ^ (i >>> 15)) & this.mask;
    for (;;) {
      if (this.n[i] === 0) break;
      if (this.a[i] === a && this.b[i] === b) { this.n[i]!++; return; }
      i = (i + 1) & this.mask;
    }
    if (this.size >= PAIR_LIMIT) { this.dropped++; return; }
    if ((this.size + 1) * 10 > (this.mask + 1) * 7) { this.grow(); this.add(a, b); return; }
    this.a[i] = a; this.b[i] = b; this.n[i] = 1;
    this.size++;
  }

  private grow(): void {
    const oa = this.a, ob = this.b, on = this.n;
    const cap = (this.mask + 1) * 2;
    this.a = new Uint32Array(cap); this.b = new Uint32Array(cap); this.n = new Float64Array(cap);
    this.mask = cap - 1;
    this.size = 0;
    for (let j = 0; j < on.length; j++) {
      if (on[j] === 0) continue;
      let i = (Math.imul(oa[j]!, 0x9e3779b1) ^ Math.imul(ob[j]! + 1, 0x85ebca6b)) >>> 0;
      i = (i ^ (i >>> 15)) & this.mask;
      while (this.n[i] !== 0) i = (i + 1) & this.mask;
      this.a[i] = oa[j]!; this.b[i] = ob[j]!; this.n[i] = on[j]!;
      this.size++;
    }
  }

  /** The k pairs with the most pages, most first. */
  top(k: number): { a: number; b: number; pages: number }[] {
    const out: { a: number; b: number; pages: number }[] = [];
    for (let i = 0; i <= this.mask; i++) if (this.n[i]! > 0) out.push({ a: this.a[i]!, b: this.b[i]!, pages: this.n[i]! });
    out.sort((x, y) => y.pages - x.pages || x.a - y.a || x.b - y.b);
    return out.slice(0, k);
  }
}

// ---- most repeated contents ----

export const PREVIEW_BYTES = 64;

export class TopContents {
  private readonly fp: Uint32Array;
  readonly count: Float64Array;
  readonly firstSource: Uint32Array;
  readonly previewOffset: Int32Array;
  readonly preview: Uint8Array;
  size = 0;
  private minCount = 0;

  constructor(readonly k: number) {
    this.fp = new Uint32Array(k * 4);
    this.count = new Float64Array(k);
    this.firstSource = new Uint32Array(k);
    this.previewOffset = new Int32Array(k);
    this.preview = new Uint8Array(k * PREVIEW_BYTES);
  }

  /** Called when a content's count grew to `count` (>= 2); `page` holds the content. */
  bump(a: number, b: number, c: number, d: number, count: number, firstSource: number, page: Uint8Array, pageSize: number): void {
    if (count <= this.minCount && this.size === this.k) return;
    const fp = this.fp;
    let e = -1;
    for (let j = 0; j < this.size; j++) {
      const q = j << 2;
      if (fp[q] === a && fp[q + 1] === b && fp[q + 2] === c && fp[q + 3] === d) { e = j; break; }
    }
    if (e < 0) {
      if (this.size < this.k) e = this.size++;
      else {
        e = 0;
        for (let j = 1; j < this.k; j++) if (this.count[j]! < this.count[e]!) e = j;
      }
      const q = e << 2;
      fp[q] = a; fp[q + 1] = b; fp[q + 2] = c; fp[q + 3] = d;
      this.firstSource[e] = firstSource;
      // Preview from the first non-zero byte (rounded down to 16), so a page that is mostly
      // zeros with a small header or trailer still shows its content.
      let nz = 0;
      while (nz < pageSize && page[nz] === 0) nz++;
      let off = Math.min(nz & ~15, pageSize - PREVIEW_BYTES);
      if (off < 0) off = 0;
      this.previewOffset[e] = off;
      this.preview.set(page.subarray(off, off + PREVIEW_BYTES), e * PREVIEW_BYTES);
    }
    this.count[e] = count;
    if (this.size === this.k) {
      let m = this.count[0]!;
      for (let j = 1; j < this.k; j++) if (this.count[j]! < m) m = this.count[j]!;
      this.minCount = m;
    }
  }

  /** Entry numbers, most repeated first. */
  order(): number[] {
    const idx: number[] = [];
    for (let j = 0; j < this.size; j++) idx.push(j);
    idx.sort((x, y) => this.count[y]! - this.count[x]!);
    return idx;
  }
}
