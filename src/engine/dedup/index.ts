/**
 * FingerprintIndex: an open-addressing hash table from 64-bit fingerprints to object ids.
 *
 *   table: Uint32Array, power-of-two capacity, each cell 0 (empty) or id + 1
 *   keys:  the fingerprint of id lives in the shared KeyColumns (lo/hi arrays indexed by id),
 *          so a cell costs 4 bytes and the table never stores a key twice.
 *
 * Linear probing from (lo & mask); deletion by backward shift (no tombstones), so a probe
 * sequence never has holes and lookups stop at the first empty cell. Load factor <= 0.8.
 * Several ids may share one fingerprint (hash collisions, or content the store declined to
 * share); lookups enumerate all of them with probeStart()/probeNext() and the caller confirms
 * each candidate by comparing bytes.
 */
import { grow } from '../alloc/typed.js';

/** Per-id fingerprint halves, shared by the indexes of one store. */
export class KeyColumns {
  lo = new Uint32Array(0);
  hi = new Uint32Array(0);
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

export class FingerprintIndex {
  private table: Uint32Array;
  private mask: number;
  private count = 0;
  // probe cursor
  private pos = 0;
  private qlo = 0;
  private qhi = 0;

  constructor(private readonly keys: KeyColumns, initialCapacity = 1024) {
    let cap = 16;
    while (cap < initialCapacity) cap *= 2;
    this.table = new Uint32Array(cap);
    this.mask = cap - 1;
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
    this.pos = this.qlo & this.mask;
  }

  /** Next id with the probed fingerprint, or -1 when there are no more. */
  probeNext(): number {
    const t = this.table, m = this.mask, klo = this.keys.lo, khi = this.keys.hi;
    for (let p = this.pos; ; p = (p + 1) & m) {
      const v = t[p]!;
      if (v === 0) { this.pos = p; return -1; }
      const id = v - 1;
      if (klo[id] === this.qlo && khi[id] === this.qhi) {
        this.pos = (p + 1) & m;
        return id;
      }
    }
  }

  /** Adds id (its fingerprint must already be in the key columns). */
  insert(id: number): void {
    if ((this.count + 1) > this.table.length * MAX_LOAD) this.resize(this.table.length * 2);
    this.place(id);
    this.count++;
  }

  /** Removes id; returns false if it was not present. */
  remove(id: number): boolean {
    const t = this.table, m = this.mask;
    let p = this.keys.lo[id]! & m;
    for (;;) {
      const v = t[p]!;
      if (v === 0) return false;
      if (v === id + 1) break;
      p = (p + 1) & m;
    }
    // Backward shift: pull later entries of the run into the hole when their home allows it.
    let hole = p;
    for (let q = (p + 1) & m; ; q = (q + 1) & m) {
      const v = t[q]!;
      if (v === 0) break;
      const home = this.keys.lo[v - 1]! & m;
      // Entry at q may move to hole iff home is not cyclically in (hole, q].
      const dist = (q - home) & m;
      const gap = (q - hole) & m;
      if (dist >= gap) {
        t[hole] = v;
        hole = q;
      }
    }
    t[hole] = 0;
    this.count--;
    if (this.table.length > 1024 && this.count < this.table.length * 0.15) this.resize(this.table.length / 2);
    return true;
  }

  private place(id: number): void {
    const t = this.table, m = this.mask;
    let p = this.keys.lo[id]! & m;
    while (t[p] !== 0) p = (p + 1) & m;
    t[p] = id + 1;
  }

  private resize(cap: number): void {
    const old = this.table;
    this.table = new Uint32Array(cap);
    this.mask = cap - 1;
    for (let i = 0; i < old.length; i++) if (old[i] !== 0) this.place(old[i]! - 1);
  }
}
