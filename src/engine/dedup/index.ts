/**
 * FingerprintIndex: an open-addressing hash table from 64-bit fingerprints to object ids, resized
 * incrementally (Redis dict.c's two tables), so no single call pays for a whole rehash.
 *
 *   table: Uint32Array, any capacity, each cell 0 (empty) or id + 1
 *   keys:  the fingerprint of id lives in the shared KeyColumns (lo/hi arrays indexed by id),
 *          so a cell costs 4 bytes and the table never stores a key twice.
 *
 * Linear probing from home(lo) = floor(lo * capacity / 2^32) (a multiply instead of a mask, so
 * the capacity need not be a power of two); deletion by backward shift (no tombstones), so a
 * probe sequence never has holes and lookups stop at the first empty cell. The table grows by
 * 1.25x at load 0.8, so its load stays in 0.64..0.8 (~5.6 B per object) instead of the
 * 0.4..0.8 a power-of-two table swings through (at 4 Mi objects one would sit at 0.5: 8 B); it
 * shrinks to load 0.6 when it falls below 0.3. Several ids may share one fingerprint (hash
 * collisions, or content the store declined to share); lookups enumerate all of them with
 * probeStart()/probeNext() and the caller confirms each candidate by comparing bytes.
 *
 * Resizing (grow or shrink) never rehashes all at once — at 16 Mi objects that was ~1 s in one
 * store. A resize allocates the new table and keeps the old one beside it:
 *
 *        old (draining, never inserted into)              table (new capacity, takes all inserts)
 *   +-----------------+-----------------------------+     +---------------------------------------+
 *   | 0 / MOVED only  | ids not yet moved, 0, MOVED |     | ids moved so far + ids inserted since |
 *   +-----------------+-----------------------------+     +---------------------------------------+
 *   0             rehashAt                       oldCap
 *
 * Every probeStart/insert/remove first moves the next REHASH_STEP cells of `old` (a fixed
 * number of cells, empty or not: bounded work per call) into `table` and leaves MOVED in their
 * place. Removing an id that is still in `old` also leaves MOVED. MOVED is a tombstone: a lookup
 * in `old` walks over it, so the probe runs of the ids not yet moved stay intact without any
 * backward shift, and it stops at a 0, of which `old` keeps all it had (it gets no inserts).
 * Lookups consult both tables. When rehashAt reaches the end (or `old` holds no ids) the old
 * table is dropped. bytes() counts both tables while they coexist.
 *
 * Why a resize always finishes before the new table needs another: a grow starts at load 0.64
 * of the new table; the oldCap cells are moved in at most oldCap / REHASH_STEP calls, so at most
 * that many inserts arrive meanwhile, and the new load stays under 0.64 + 0.8 / (1.25 * 16) =
 * 0.69. A shrink starts at load 0.6 of a table half the old one (0.3 / 0.6), and ends at most at
 * 0.6 + 0.6 * (1 / 16) / 0.3 = 0.73. Both are below MAX_LOAD, so no resize is ever requested
 * during another (insert() still finishes a resize at once if that were ever false, rather than
 * fill a table).
 *
 * The probe cursor (probeStart/probeNext) is valid until the next insert or remove.
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
const MIN_LOAD = 0.3;
const SHRINK_TO_LOAD = 0.6;
const MIN_CAPACITY = 16;
/** Tables at most this large shrink not at all (a few KiB; avoids resizing back and forth when small). */
const NO_SHRINK_BELOW = 1024;
/**
 * Cells of the old table moved per call during a resize. 16 keeps every resize finished before
 * the new table fills (see above) and costs at most 16 cell reads and ~13 moves per call (each a
 * read of keys.lo and a write into the new table at about the same relative position: the
 * old table is read in order and the new one written nearly in order).
 */
const REHASH_STEP = 16;
/** An old-table cell whose id has been moved to the new table or removed. */
const MOVED = 0xffffffff;

/** Home cell of a fingerprint: lo * cap / 2^32, exact enough in doubles for cap < 2^31 (the result is always < cap). */
function home(lo: number, cap: number): number {
  return Math.floor((lo * cap) / 4294967296);
}

/**
 * A zeroed table of `cap` cells: a plain Uint32Array (calloc'd, so its pages are zero-filled by
 * the kernel as they are first touched, spread over the resize, not at allocation). A table on a
 * resizable ArrayBuffer avoids V8's external-memory accounting of the allocation, but every
 * access to it costs more: the store path ran ~30% slower at 16 Mi objects (bench:latency).
 */
function newTable(cap: number): Uint32Array {
  return new Uint32Array(cap);
}

export class FingerprintIndex {
  private table: Uint32Array;
  private cap: number;
  private count = 0;
  // The table being drained during a resize (null otherwise), where the next cell to move is, and
  // how many ids it still holds.
  private old: Uint32Array | null = null;
  private oldCap = 0;
  private rehashAt = 0;
  private oldLive = 0;
  // probe cursor: position, and whether it is walking `old` (after `table`)
  private pos = 0;
  private inOld = false;
  private qlo = 0;
  private qhi = 0;

  constructor(private readonly keys: KeyColumns, initialCapacity = 1024) {
    this.cap = Math.max(MIN_CAPACITY, Math.ceil(initialCapacity));
    this.table = newTable(this.cap);
  }

  get size(): number {
    return this.count;
  }

  /** Bytes of both tables (the old one only while a resize is draining it). */
  bytes(): number {
    return this.table.byteLength + (this.old === null ? 0 : this.old.byteLength);
  }

  /** True while a resize is under way (two tables). For tests and stats. */
  get resizing(): boolean {
    return this.old !== null;
  }

  /** Starts enumerating ids whose fingerprint is (lo, hi). */
  probeStart(lo: number, hi: number): void {
    if (this.old !== null) this.rehashStep();
    this.qlo = lo >>> 0;
    this.qhi = hi >>> 0;
    this.pos = home(this.qlo, this.cap);
    this.inOld = false;
  }

  /** Next id with the probed fingerprint, or -1 when there are no more. */
  probeNext(): number {
    const klo = this.keys.lo, khi = this.keys.hi, qlo = this.qlo, qhi = this.qhi;
    if (!this.inOld) {
      const t = this.table, cap = this.cap;
      for (let p = this.pos; ; p = p + 1 === cap ? 0 : p + 1) {
        const v = t[p]!;
        if (v === 0) {
          if (this.old === null) { this.pos = p; return -1; }
          this.inOld = true; // then the ids not yet moved
          this.pos = home(qlo, this.oldCap);
          break;
        }
        const id = v - 1;
        if (klo[id] === qlo && khi[id] === qhi) {
          this.pos = p + 1 === cap ? 0 : p + 1;
          return id;
        }
      }
    }
    const t = this.old;
    if (t === null) return -1;
    const cap = this.oldCap;
    for (let p = this.pos; ; p = p + 1 === cap ? 0 : p + 1) {
      const v = t[p]!;
      if (v === 0) { this.pos = p; return -1; }
      if (v === MOVED) continue;
      const id = v - 1;
      if (klo[id] === qlo && khi[id] === qhi) {
        this.pos = p + 1 === cap ? 0 : p + 1;
        return id;
      }
    }
  }

  /** Adds id (its fingerprint must already be in the key columns). */
  insert(id: number): void {
    if (this.old !== null) {
      this.rehashStep();
      // Unreachable by the arithmetic in the header; a safety net, not a policy.
      if (this.old !== null && this.count + 1 > this.cap * 0.9) this.finishResize();
    }
    if (this.old === null && this.count + 1 > this.cap * MAX_LOAD) this.startResize(Math.ceil(this.cap * GROWTH));
    place(this.table, this.cap, this.keys.lo, id);
    this.count++;
  }

  /** Removes id; returns false if it was not present. */
  remove(id: number): boolean {
    if (this.old !== null) this.rehashStep();
    if (!removeShift(this.table, this.cap, this.keys.lo, id)) {
      if (this.old === null || !this.removeOld(id)) return false;
    }
    this.count--;
    if (this.old === null && this.cap > NO_SHRINK_BELOW && this.count < this.cap * MIN_LOAD) {
      this.startResize(Math.max(MIN_CAPACITY, Math.ceil(this.count / SHRINK_TO_LOAD)));
    }
    return true;
  }

  // ---- resizing ---------------------------------------------------------------------------------

  private startResize(cap: number): void {
    this.old = this.table;
    this.oldCap = this.cap;
    this.oldLive = this.count;
    this.rehashAt = 0;
    this.table = newTable(cap);
    this.cap = cap;
    if (this.oldLive === 0) this.endResize();
  }

  /** Moves the next REHASH_STEP cells of the old table into the new one. */
  private rehashStep(): void {
    const old = this.old!, oldCap = this.oldCap, t = this.table, cap = this.cap, klo = this.keys.lo;
    const end = Math.min(oldCap, this.rehashAt + REHASH_STEP);
    let moved = 0;
    for (let p = this.rehashAt; p < end; p++) {
      const v = old[p]!;
      if (v === 0 || v === MOVED) continue;
      old[p] = MOVED;
      place(t, cap, klo, v - 1);
      moved++;
    }
    this.rehashAt = end;
    this.oldLive -= moved;
    if (end === oldCap || this.oldLive === 0) this.endResize();
  }

  private finishResize(): void {
    while (this.old !== null) this.rehashStep();
  }

  private endResize(): void {
    this.old = null;
    this.oldCap = 0;
    this.rehashAt = 0;
    this.oldLive = 0;
  }

  /** Removes an id not yet moved out of the old table: a tombstone, no shift (see the header). */
  private removeOld(id: number): boolean {
    const t = this.old!, cap = this.oldCap;
    for (let p = home(this.keys.lo[id]!, cap); ; p = p + 1 === cap ? 0 : p + 1) {
      const v = t[p]!;
      if (v === 0) return false;
      if (v === id + 1) {
        t[p] = MOVED;
        if (--this.oldLive === 0) this.endResize();
        return true;
      }
    }
  }

  // ---- white-box ----------------------------------------------------------------------------------

  /**
   * Checks the invariants (tests): every id sits in its own probe run (no empty cell between its
   * home and its cell), the tables hold `size` ids in all, and cells of the old table before
   * rehashAt hold no id.
   */
  checkInvariants(): void {
    const klo = this.keys.lo;
    const run = (t: Uint32Array, cap: number, tomb: boolean): number => {
      let n = 0;
      for (let p = 0; p < cap; p++) {
        const v = t[p]!;
        if (v === 0 || (tomb && v === MOVED)) continue;
        n++;
        for (let q = home(klo[v - 1]!, cap); q !== p; q = q + 1 === cap ? 0 : q + 1) {
          if (t[q] === 0) throw new Error(`index: id ${v - 1} at ${p} is cut off from its home by an empty cell at ${q}`);
        }
      }
      return n;
    };
    let n = run(this.table, this.cap, false);
    if (this.old !== null) {
      for (let p = 0; p < this.rehashAt; p++) {
        if (this.old[p] !== 0 && this.old[p] !== MOVED) throw new Error(`index: old cell ${p} < rehashAt ${this.rehashAt} holds an id`);
      }
      const o = run(this.old, this.oldCap, true);
      if (o !== this.oldLive) throw new Error(`index: old table holds ${o} ids, counted ${this.oldLive}`);
      n += o;
    }
    if (n !== this.count) throw new Error(`index: tables hold ${n} ids, size is ${this.count}`);
    if (this.count > this.cap * 0.9) throw new Error(`index: load ${this.count / this.cap} over 0.9`);
  }
}

/** Puts id in the first empty cell of its probe run (t has an empty cell: load < 1). */
function place(t: Uint32Array, cap: number, klo: Uint32Array, id: number): void {
  let p = home(klo[id]!, cap);
  while (t[p] !== 0) p = p + 1 === cap ? 0 : p + 1;
  t[p] = id + 1;
}

/** Removes id from a table without tombstones (backward shift); false if it is not there. */
function removeShift(t: Uint32Array, cap: number, klo: Uint32Array, id: number): boolean {
  let p = home(klo[id]!, cap);
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
    const h = home(klo[v - 1]!, cap);
    // Entry at q may move to hole iff its home is not cyclically in (hole, q].
    const dist = q >= h ? q - h : q - h + cap;
    const gap = q >= hole ? q - hole : q - hole + cap;
    if (dist >= gap) {
      t[hole] = v;
      hole = q;
    }
  }
  t[hole] = 0;
  return true;
}
