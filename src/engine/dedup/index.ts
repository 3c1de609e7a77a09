/**
 * FingerprintIndex: an open-addressing hash table from 64-bit fingerprints to object ids.
 *
 *   table: Uint32Array, any capacity, each cell 0 (empty) or id + 1
 *   keys:  the fingerprint of id lives in the shared KeyColumns (lo/hi arrays indexed by id),
 *          so a cell costs 4 bytes and the table never stores a key twice.
 *
 * Linear probing from home(lo) = floor(lo * capacity / 2^32) (a multiply instead of a mask, so
 * the capacity need not be a power of two); deletion by backward shift (no tombstones), so a
 * probe sequence never has holes and lookups stop at the first empty cell. The table grows by
 * 1.25x at load 0.8, so its load stays in 0.64..0.8 (~5.6 B per object) instead of the
 * 0.4..0.8 a power-of-two table swings through (at 4 Mi objects one would sit at 0.5: 8 B).
 * Several ids may share one fingerprint (hash collisions, or content the store declined to
 * share); lookups enumerate all of them with probeStart()/probeNext() and the caller confirms
 * each candidate by comparing bytes.
 */
import { grow, growable } from '../alloc/typed.js';

/** Per-id fingerprint halves, shared by the indexes of one store. */
export class KeyColumns {
  lo = growable(Uint32Array);
  hi = growable(Uint32Array);
  ensure(n: number): void {
    if (n <= this.lo.length) return;
    this.lo = grow(this.lo, n);
    this.hi = grow(this.hi, this.lo.length);
  }
  bytes(): number {
    return this.lo.byteLength + this.hi.byteLength;
  }
}

// 0.8: expected probes ~3 for a hit and ~13 cells (sequential, mostly one cache line) for a
// miss; each occupied cell costs a read of keys.lo. Lower loads cost ~1 B/object more.
const MAX_LOAD = 0.8;
const GROWTH = 1.25;
const MIN_CAPACITY = 16;

/** Home cell of a fingerprint: lo * cap / 2^32, exact enough in doubles for cap < 2^31 (the result is always < cap). */
function home(lo: number, cap: number): number {
  return Math.floor((lo * cap) / 4294967296);
}

export class FingerprintIndex {
  private table: Uint32Array;
  private cap: number;
  private count = 0;
  // probe cursor
  private pos = 0;
  private qlo = 0;
  private qhi = 0;

  constructor(private readonly keys: KeyColumns, initialCapacity = 1024) {
    this.cap = Math.max(MIN_CAPACITY, Math.ceil(initialCapacity));
    this.table = new Uint32Array(this.cap);
  }

  get size(): number {
    return this.count;
  }

  bytes(): number {
    return this.table.byteLength;
  }

  /** Starts enumerating ids whose fingerprint is (lo, hi). */
  probeStart(lo: number, hi: number): void {
    this.qlo = lo >>> 0;
    this.qhi = hi >>> 0;
    this.pos = home(this.qlo, this.cap);
  }

  /** Next id with the probed fingerprint, or -1 when there are no more. */
  probeNext(): number {
    const t = this.table, cap = this.cap, klo = this.keys.lo, khi = this.keys.hi;
    for (let p = this.pos; ; p = p + 1 === cap ? 0 : p + 1) {
      const v = t[p]!;
      if (v === 0) { this.pos = p; return -1; }
      const id = v - 1;
      if (klo[id] === this.qlo && khi[id] === this.qhi) {
        this.pos = p + 1 === cap ? 0 : p + 1;
        return id;
      }
    }
  }

  /** Adds id (its fingerprint must already be in the key columns). */
  insert(id: number): void {
    if (this.count + 1 > this.cap * MAX_LOAD) this.resize(Math.ceil(this.cap * GROWTH));
    this.place(id);
    this.count++;
  }

  /** Removes id; returns false if it was not present. */
  remove(id: number): boolean {
    const t = this.table, cap = this.cap;
    let p = home(this.keys.lo[id]!, cap);
    for (;;) {
      const v = t[p]!;
      if (v === 0) return false;
      if (v === id + 1) break;
      p = p + 1 === cap ? 0 : p + 1;
    }
    // Backward shift: pull later entries of the run into the hole when their home allows it.
    let hole = p;
    for (let q = p + 1 === cap ? 0 : p + 1; ; q = q + 1 === cap ? 0 : q + 1) {
      const v = t[q]!;
      if (v === 0) break;
      const h = home(this.keys.lo[v - 1]!, cap);
      // Entry at q may move to hole iff its home is not cyclically in (hole, q].
      const dist = q >= h ? q - h : q - h + cap;
      const gap = q >= hole ? q - hole : q - hole + cap;
      if (dist >= gap) {
        t[hole] = v;
        hole = q;
      }
    }
    t[hole] = 0;
    this.count--;
    if (cap > 1024 && this.count < cap * 0.3) this.resize(Math.max(MIN_CAPACITY, Math.ceil(this.count / 0.6)));
    return true;
  }

  private place(id: number): void {
    const t = this.table, cap = this.cap;
    let p = home(this.keys.lo[id]!, cap);
    while (t[p] !== 0) p = p + 1 === cap ? 0 : p + 1;
    t[p] = id + 1;
  }

  private resize(cap: number): void {
    const old = this.table;
    this.table = new Uint32Array(cap);
    this.cap = cap;
    for (let i = 0; i < old.length; i++) if (old[i] !== 0) this.place(old[i]! - 1);
  }
}
