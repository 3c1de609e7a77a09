/**
 * The object table: one row per distinct stored content, as parallel typed-array columns indexed
 * by ObjectId (no JS object per object), and the LRU list over the objects held in RAM.
 *
 *   column     type          bytes  meaning
 *   refs       u8            1      slots referring to the object; 255 = count in `bigRefs` (rare)
 *   lens       u16 | u32     2      stored length (compressed, or pageSize when kept raw)
 *   keys.lo/hi u32 x 2       8      fingerprint (XXH3-64 of the page); a free id's lo = next free + 1
 *   flags      u8            1      IN_RAM | IN_TIER | REFERENCED | IN_COLD | COLD_SKIP | IN_STAGE
 *   w0, w1     u32 x 2       8      tier location (meaning chosen by the tier: disk = segment, offset)
 *   prev, next u32 x 2       8      LRU links (NIL ends), only while IN_RAM
 *   owner      u16           2      area that created the object — only when an area has a pool quota
 *   serial     u32 x 2       8      durable mode only: the object's serial in the log (never reused)
 *   (the RAM location, a zspool handle, lives in the pool's own handle column: compaction moves
 *    objects by rewriting that one cell)
 *
 * Locations: IN_RAM only (hot, never written out), IN_TIER only (written back), or both (a
 * written-back object promoted by a load, or written through: dropping its RAM copy costs no
 * write). An object is in the LRU list exactly when IN_RAM.
 *
 * Without a tier nothing is ever written back: the location and LRU columns (16 B per object) are
 * then not allocated and the list calls only count (chosen once, at construction).
 *
 * LRU with second chance (zswap's referenced bit): a new RAM object goes to the head unreferenced;
 * a load sets REFERENCED; the writer takes the tail, and a referenced tail is cleared and moved
 * to the head once instead of being written out. Cost: 8 B of links + 1 bit per object.
 */
import { grow, growable } from '../engine/alloc/typed.js';
import { KeyColumns } from '../engine/dedup/index.js';

/** An object's row number. */
export type ObjectId = number & { readonly __brand: 'ObjectId' };

export const IN_RAM = 1;
export const IN_TIER = 2;
export const REFERENCED = 4;
/** Held in a cold group (src/core/cold.ts); excludes IN_RAM and IN_TIER. */
export const IN_COLD = 8;
/** Found unfit for a cold group (zstd of its group did not beat lz4, or corrupt): stays hot. */
export const COLD_SKIP = 16;
/** Staged: a new object whose raw page waits in the compression stage's ring (src/core/stage.ts); excludes the others. */
export const IN_STAGE = 32;

const NIL = 0xffffffff;
const REFS_BIG = 255;

export class ObjectTable {
  readonly keys = new KeyColumns();
  refs = growable(Uint8Array);
  lens: Uint16Array | Uint32Array;
  flags = growable(Uint8Array);
  w0 = growable(Uint32Array);
  w1 = growable(Uint32Array);
  /** Area that created each object (only when some area has a pool quota: off costs nothing). */
  owner: Uint16Array | null = null;
  /** Durable mode: each object's serial (lo, hi halves), which journal records name it by. */
  serialLo: Uint32Array | null = null;
  serialHi: Uint32Array | null = null;
  private prev = growable(Uint32Array);
  private next = growable(Uint32Array);
  private readonly bigRefs = new Map<number, number>(); // refs of objects shared by >= 255 slots
  private nextFreeId = -1; // free ids chained through keys.lo (a free id's lo = next free + 1)
  private highId = 0;
  lruHead = NIL;
  lruTail = NIL;
  /** Objects in the LRU list (= objects IN_RAM). */
  lruCount = 0;

  /**
   * `onGrow(capacity)`: called when the id space grows, so the pool can size its handle column.
   * `tiered`: objects can leave RAM (a tier exists): keep tier locations and the LRU list.
   */
  constructor(pageSize: number, private readonly onGrow: (capacity: number) => void, readonly tiered = true) {
    // Lengths up to pageSize: u16 holds them for pages up to 32 KiB; 64 KiB pages need u32.
    this.lens = pageSize <= 32768 ? growable(Uint16Array) : growable(Uint32Array);
    if (!tiered) {
      // RAM only: nothing is ever chosen for writeback, so the list is just a count.
      this.lruPushHead = (): void => { this.lruCount++; };
      this.lruRemove = (): void => { this.lruCount--; };
    }
  }

  /** Starts keeping each object's owner area (per-area quotas). Call before any object exists. */
  enableOwners(): void {
    if (this.owner !== null) return;
    this.owner = grow(growable(Uint16Array), Math.max(1, this.refs.length));
  }

  /** Starts keeping each object's serial (durable mode). Call before any object exists. */
  enableSerials(): void {
    if (this.serialLo !== null) return;
    this.serialLo = grow(growable(Uint32Array), Math.max(1, this.refs.length));
    this.serialHi = grow(growable(Uint32Array), Math.max(1, this.refs.length));
  }

  serialOf(id: number): number {
    return this.serialLo![id]! + this.serialHi![id]! * 2 ** 32;
  }

  setSerial(id: number, serial: number): void {
    this.serialLo![id] = serial >>> 0;
    this.serialHi![id] = Math.floor(serial / 2 ** 32);
  }

  /** Ids ever handed out are below this. */
  get idLimit(): number { return this.highId; }

  // ---- ids ----------------------------------------------------------------------------------------

  newId(): ObjectId {
    let id: number;
    if (this.nextFreeId >= 0) {
      id = this.nextFreeId;
      this.nextFreeId = this.keys.lo[id]! - 1;
    } else {
      id = this.highId++;
      if (id >= this.refs.length) {
        this.refs = grow(this.refs, id + 1);
        const cap = this.refs.length;
        this.lens = grow(this.lens, cap);
        this.flags = grow(this.flags, cap);
        if (this.tiered) {
          this.w0 = grow(this.w0, cap);
          this.w1 = grow(this.w1, cap);
          this.prev = grow(this.prev, cap);
          this.next = grow(this.next, cap);
        }
        if (this.owner !== null) this.owner = grow(this.owner, cap);
        if (this.serialLo !== null) { this.serialLo = grow(this.serialLo, cap); this.serialHi = grow(this.serialHi!, cap); }
        this.keys.ensure(cap);
        this.onGrow(cap);
      }
    }
    this.flags[id] = 0;
    return id as ObjectId;
  }

  /** Returns an id to the free chain. The caller has dropped its RAM and tier copies. */
  freeId(id: number): void {
    this.refs[id] = 0;
    this.flags[id] = 0;
    this.keys.lo[id] = this.nextFreeId + 1;
    this.nextFreeId = id;
  }

  /** True when `id` is a live object (has references). */
  isLive(id: number): boolean {
    return id < this.highId && this.refs[id] !== 0;
  }

  // ---- references -----------------------------------------------------------------------------

  incRef(id: number): void {
    const r = this.refs[id]!;
    if (r < REFS_BIG - 1) this.refs[id] = r + 1;
    else if (r === REFS_BIG - 1) { this.refs[id] = REFS_BIG; this.bigRefs.set(id, REFS_BIG); }
    else this.bigRefs.set(id, this.bigRefs.get(id)! + 1);
  }

  /** Drops one reference; returns the references left. */
  decRef(id: number): number {
    const r = this.refs[id]!;
    if (r < REFS_BIG) { this.refs[id] = r - 1; return r - 1; }
    const n = this.bigRefs.get(id)! - 1;
    if (n < REFS_BIG) { this.bigRefs.delete(id); this.refs[id] = n; } else this.bigRefs.set(id, n);
    return n;
  }

  refCount(id: number): number {
    const r = this.refs[id]!;
    return r < REFS_BIG ? r : this.bigRefs.get(id)!;
  }

  // ---- LRU ------------------------------------------------------------------------------------

  /** Inserts `id` at the head (most recent). It must not be in the list. */
  lruPushHead(id: number): void {
    this.pushHead(id);
  }

  lruRemove(id: number): void {
    this.unlink(id);
  }

  private pushHead(id: number): void {
    this.prev[id] = NIL;
    this.next[id] = this.lruHead;
    if (this.lruHead !== NIL) this.prev[this.lruHead] = id; else this.lruTail = id;
    this.lruHead = id;
    this.lruCount++;
  }

  private unlink(id: number): void {
    const p = this.prev[id]!, n = this.next[id]!;
    if (p !== NIL) this.next[p] = n; else this.lruHead = n;
    if (n !== NIL) this.prev[n] = p; else this.lruTail = p;
    this.lruCount--;
  }

  /** The least recently used RAM object, or -1 when none. */
  lruOldest(): number {
    return this.lruTail === NIL ? -1 : this.lruTail;
  }

  /** The next more recently used RAM object after `id` (towards the head), or -1. */
  lruNewer(id: number): number {
    const p = this.prev[id]!;
    return p === NIL ? -1 : p;
  }

  // ---- accounting -----------------------------------------------------------------------------

  bytes(): number {
    return this.keys.bytes() + this.refs.byteLength + this.lens.byteLength + this.flags.byteLength +
      this.w0.byteLength + this.w1.byteLength + this.prev.byteLength + this.next.byteLength + (this.owner?.byteLength ?? 0) +
      (this.serialLo !== null ? 2 * this.serialLo.byteLength : 0) +
      this.bigRefs.size * 40; // ~40 B per Map entry, one per object shared by >= 255 slots
  }

  /** White-box check of the LRU list: it holds exactly the IN_RAM objects, linked both ways. */
  checkLru(): void {
    if (!this.tiered) return; // a count only (checked against IN_RAM objects by the store)
    let n = 0;
    let p = NIL;
    for (let id = this.lruHead; id !== NIL; id = this.next[id]!) {
      if (this.prev[id] !== p) throw new Error(`LRU: ${id}.prev ${this.prev[id]} != ${p}`);
      if ((this.flags[id]! & IN_RAM) === 0) throw new Error(`LRU holds ${id}, which is not in RAM`);
      if (this.refs[id] === 0) throw new Error(`LRU holds freed id ${id}`);
      p = id;
      if (++n > this.lruCount) throw new Error('LRU longer than its count (a cycle?)');
    }
    if (p !== this.lruTail) throw new Error(`LRU tail ${this.lruTail} != ${p}`);
    if (n !== this.lruCount) throw new Error(`LRU count ${this.lruCount} != ${n}`);
  }
}
