/**
 * ZsPool: a zsmalloc-style allocator for compressed pages, over large arenas.
 *
 *   arena (1 MiB = 256 units of P bytes, shared by zspages of every class)
 *   +---------------+-----+---------------------+-----+-- ... --+
 *   | zspage (k=3)  |free | zspage (k=5)        | k=1 |         |   each zspage = k contiguous units
 *   +---------------+-----+---------------------+-----+-- ... --+
 *   zspage of class 1232 B, k = 5 (20480 B): 16 objects packed back to back; objects span the
 *   unit boundaries inside the zspage; the 768 B tail is the class's waste (see size-class.ts).
 *
 * Data structures (struct of arrays, no object per page or per zspage):
 * - per object id (ids are chosen by the caller, the page store): one u32 handle
 *       bits 31..10  zspage id (< 2^22 - 1)
 *       bits  9..0   index of the object inside its zspage (< 1024 = MAX_OBJS_PER_ZSPAGE)
 *     0xffffffff = not allocated. This is the *handle table*: the caller keeps only the id, so
 *     moving an object during compaction updates this one cell and nothing else.
 * - per zspage id: class, objects in use, head of its free-object list, arena and slot in the
 *   arena, fullness group and the links of its group's list.
 * - free objects inside a zspage form a list threaded through the free objects themselves
 *   (a u16 "next index" in the object's first two bytes; 0xffff ends the list), so free space
 *   costs no metadata, as in zsmalloc.
 * - fullness groups per class: 1..4 = in use in (0,25%], (25,50], (50,75], (75,100%),
 *   5 = full. Allocation takes the fullest non-full zspage (keeps sparse ones draining);
 *   compaction empties the sparsest into the fullest.
 * - arenas: one Buffer each (a JS object per arena — 1 MiB — not per page) and a unit map
 *   (one byte per unit: free or used). A zspage takes the first run of k free units in the
 *   fullest arena that has one, so only the last arena is partly empty while the pool grows.
 *   An arena whose last zspage is freed is dropped (its memory goes back to the allocator).
 *   `totalSize()` is the bytes of arenas held: zswap's `pool_total_size`.
 *
 * Limits: < 2^22 - 1 zspages (each >= 3 units with the 4 KiB class table, so >= 48 GiB of pool;
 * past that, alloc fails and the store counts reject_alloc_fail); objects per zspage <= 1024. Choosing an arena scans
 * the partly used arenas (O(arenas) per new zspage, which happens once per objsPerZspage
 * allocations); after heavy frees many arenas may be partly used until compact() runs.
 */
import { buildClassTable, classFor, MAX_CHAIN, MAX_OBJS_PER_ZSPAGE, type ClassTable } from './size-class.js';
import { grow, growable } from './typed.js';
import { tuneMallocForArenas } from '../codec/native.js';

/** Object handles are caller ids; `ObjectId` is the page store's object id. */
export type ObjectId = number & { readonly __brand: 'ObjectId' };

// ---- handles ----------------------------------------------------------------------------------
// A handle is a u32:
//   bits 31..10  zspage id       (0 .. 2^22 - 2; 2^22 - 1 would make NO_HANDLE ambiguous)
//   bits  9..0   object index    (0 .. 1023 inside its zspage)
//   0xffffffff   NO_HANDLE: the id has no RAM allocation
// Example: zspage 5, index 3 -> (5 << 10) | 3 = 5123. Pack and unpack only through these helpers.

/** A packed (zspage, index) location of a RAM object. */
export type Handle = number & { readonly __brand: 'Handle' };
export const NO_HANDLE = 0xffffffff as Handle;
const IDX_BITS = 10;
const IDX_MASK = (1 << IDX_BITS) - 1;
const MAX_ZSPAGES = 2 ** (32 - IDX_BITS) - 1; // keeps every valid handle below NO_HANDLE
if (MAX_OBJS_PER_ZSPAGE > 1 << IDX_BITS) throw new Error('size classes allow more objects per zspage than a handle can index');

export function packHandle(zspage: number, index: number): Handle {
  return ((zspage << IDX_BITS) | index) >>> 0 as Handle;
}
export function handleZspage(h: number): number {
  return h >>> IDX_BITS;
}
export function handleIndex(h: number): number {
  return h & IDX_MASK;
}

/** Why alloc() did or did not place an object: a reason, so the caller's counters need not guess. */
export type AllocResult = 'ok' | 'pool_limit' | 'zspage_limit';

const NONE = 0xffffffff; // an unused zspage's arena
const END = 0xffff;
const GROUPS = 6; // 0 unused (an empty zspage is freed at once), 1..4 partial, 5 full
const FULL = 5;

export interface CompactResult {
  moved_objects: number;
  freed_zspages: number;
  moved_zspages: number;
  freed_arenas: number;
}

export class ZsPool {
  readonly classes: ClassTable;
  readonly pageSize: number;
  /** 0 = unbounded; else the pool never holds more arena bytes than this. */
  maxBytes: number;

  // ---- handle table (per object id) ----
  private objHandle = growable(Uint32Array);

  // ---- zspages (per zspage id) ----
  private zsClass = growable(Uint8Array); // < 256 merged classes (112 at 4 KiB pages)
  private zsInuse = growable(Uint16Array);
  private zsFree = growable(Uint16Array);
  private zsArena = growable(Uint32Array);
  private zsSlot = growable(Uint8Array); // first unit in the arena (< 256 units per arena)
  private zsGroup = growable(Uint8Array);
  private zsNext = growable(Int32Array);
  private zsPrev = growable(Int32Array);
  private zsFreeIds = growable(Uint32Array);
  private zsFreeCount = 0;
  private zsHigh = 0; // ids below this have been used at least once
  private groupHead: Int32Array; // [class * GROUPS + group] -> zspage id or -1

  // ---- arenas (per arena: a JS array entry, not per page) ----
  private arenaBuf: (Buffer | null)[] = [];
  /** Per arena: one byte per unit, 1 = used by a zspage. */
  private arenaUnits: (Uint8Array | null)[] = [];
  private arenaUsed: number[] = []; // units in use
  /** Longest run of free units, capped at MAX_CHAIN (runs are only ever compared with a chain length). */
  private arenaMaxRun: number[] = [];
  /** No unit below this one is free: where the run scans start (an arena fills front to back). */
  private arenaFirstFree: number[] = [];
  private arenaFreeIds: number[] = [];
  /** Arenas with at least one free unit, and the flag saying an arena is in that list. */
  private partial: number[] = [];
  private arenaInPartial: boolean[] = [];
  /** The arena new zspages go to while it has room (-1: choose again). */
  private fillArena = -1;

  // ---- statistics ----
  liveArenas = 0;
  liveZspages = 0;
  /** Objects moved by compaction (zram's pages_compacted). */
  movedObjects = 0;

  // compaction scratch (zspage -> first object, object -> next object of its zspage)
  private cHead = new Int32Array(0);
  private cNext = new Int32Array(0);

  /** Set by locate(): the arena and byte offset of an object. Valid until the next pool call. */
  locBuf: Buffer = Buffer.alloc(0);
  locOff = 0;

  /** `arenaUnits`: see buildClassTable (default: 1 MiB arenas). */
  constructor(pageSize: number, maxBytes = 0, arenaUnits?: number) {
    this.pageSize = pageSize;
    this.maxBytes = maxBytes;
    this.classes = buildClassTable(pageSize, arenaUnits);
    this.groupHead = new Int32Array(this.classes.count * GROUPS).fill(-1);
    tuneMallocForArenas(); // freed arenas must really leave the process
  }

  /** Bytes of arenas held (pool_total_size). */
  totalSize(): number {
    return this.liveArenas * this.classes.arenaUnits * this.pageSize;
  }

  /** Bytes of typed arrays and per-arena bookkeeping this pool holds. */
  metadataBytes(): number {
    const arrays = [this.objHandle, this.zsClass, this.zsInuse, this.zsFree, this.zsArena,
      this.zsSlot, this.zsGroup, this.zsNext, this.zsPrev, this.zsFreeIds, this.groupHead, this.cHead, this.cNext];
    let b = 0;
    for (const a of arrays) b += a.byteLength;
    // per arena: unit map, plus ~64 B for the Buffer object and list entries
    b += this.arenaBuf.length * 64 + this.liveArenas * this.classes.arenaUnits;
    return b;
  }

  /** Makes ids [0, n) usable. */
  ensureIds(n: number): void {
    if (n <= this.objHandle.length) return;
    this.objHandle = grow(this.objHandle, n, NO_HANDLE);
  }

  // ---------------------------------------------------------------------------------------------
  // Core: alloc, free, locate

  /**
   * Allocates `len` bytes (1..pageSize) for object `id`. Returns false when the pool limit (or
   * the id space) stops it; nothing changes then.
   */
  alloc(id: number, len: number): AllocResult {
    const c = classFor(this.classes, len);
    let z = -1;
    const base = c * GROUPS;
    for (let g = FULL - 1; g >= 1; g--) {
      const h = this.groupHead[base + g]!;
      if (h >= 0) { z = h; break; }
    }
    if (z < 0) {
      z = this.newZspage(c);
      if (z < 0) return z === -1 ? 'pool_limit' : 'zspage_limit';
    }
    const idx = this.zsFree[z]!;
    const buf = this.arenaBuf[this.zsArena[z]!]!;
    const off = this.objOffset(z, idx);
    this.zsFree[z] = buf[off]! | (buf[off + 1]! << 8);
    this.zsInuse[z]++;
    this.regroup(z);
    this.objHandle[id] = packHandle(z, idx);
    return 'ok';
  }

  /** Frees object `id`. Frees its zspage when it was the last object, and the arena after it. */
  free(id: number): void {
    const h = this.objHandle[id]!;
    const z = handleZspage(h), idx = handleIndex(h);
    this.objHandle[id] = NO_HANDLE;
    const buf = this.arenaBuf[this.zsArena[z]!]!;
    const off = this.objOffset(z, idx);
    const next = this.zsFree[z]!;
    buf[off] = next & 0xff;
    buf[off + 1] = next >>> 8;
    this.zsFree[z] = idx;
    if (--this.zsInuse[z] === 0) this.freeZspage(z);
    else this.regroup(z);
  }

  /** Sets locBuf/locOff to where object `id` lives. */
  locate(id: number): void {
    const h = this.objHandle[id]!;
    const z = handleZspage(h);
    this.locBuf = this.arenaBuf[this.zsArena[z]!]!;
    this.locOff = this.objOffset(z, handleIndex(h));
  }

  isAllocated(id: number): boolean {
    return id < this.objHandle.length && this.objHandle[id] !== NO_HANDLE;
  }

  private objOffset(z: number, idx: number): number {
    const c = this.zsClass[z]!;
    return this.zsSlot[z]! * this.pageSize + idx * this.classes.size[c]!;
  }

  // ---------------------------------------------------------------------------------------------
  // Zspages and fullness groups

  private groupOf(z: number): number {
    const inuse = this.zsInuse[z]!;
    const cap = this.classes.objsPerZspage[this.zsClass[z]!]!;
    if (inuse >= cap) return FULL;
    return 1 + Math.floor((4 * inuse) / cap);
  }

  private link(z: number, g: number): void {
    const key = this.zsClass[z]! * GROUPS + g;
    const h = this.groupHead[key]!;
    this.zsGroup[z] = g;
    this.zsPrev[z] = -1;
    this.zsNext[z] = h;
    if (h >= 0) this.zsPrev[h] = z;
    this.groupHead[key] = z;
  }

  private unlink(z: number): void {
    const key = this.zsClass[z]! * GROUPS + this.zsGroup[z]!;
    const p = this.zsPrev[z]!, n = this.zsNext[z]!;
    if (p >= 0) this.zsNext[p] = n; else this.groupHead[key] = n;
    if (n >= 0) this.zsPrev[n] = p;
  }

  private regroup(z: number): void {
    const g = this.groupOf(z);
    if (g === this.zsGroup[z]) return;
    this.unlink(z);
    this.link(z, g);
  }

  private newZspage(c: number): number {
    const k = this.classes.chain[c]!;
    const arena = this.arenaWithRun(k);
    if (arena < 0) return -1; // pool limit
    let z: number;
    if (this.zsFreeCount > 0) z = this.zsFreeIds[--this.zsFreeCount]!;
    else {
      if (this.zsHigh >= MAX_ZSPAGES) return -2; // handle space
      z = this.zsHigh++;
      if (z >= this.zsClass.length) this.growZspages(z + 1);
    }
    const slot = this.takeRun(arena, k);
    this.zsClass[z] = c;
    this.zsInuse[z] = 0;
    this.zsArena[z] = arena;
    this.zsSlot[z] = slot;
    this.threadFreeList(z);
    this.link(z, 1);
    this.liveZspages++;
    return z;
  }

  /** Writes the free-object chain 0 -> 1 -> ... -> n-1 -> END into a fresh zspage. */
  private threadFreeList(z: number): void {
    const c = this.zsClass[z]!;
    const n = this.classes.objsPerZspage[c]!;
    const size = this.classes.size[c]!;
    const buf = this.arenaBuf[this.zsArena[z]!]!;
    let off = this.objOffset(z, 0);
    for (let i = 0; i < n; i++, off += size) {
      const next = i + 1 < n ? i + 1 : END;
      buf[off] = next & 0xff;
      buf[off + 1] = next >>> 8;
    }
    this.zsFree[z] = 0;
  }

  private freeZspage(z: number): void {
    this.unlink(z);
    const a = this.zsArena[z]!;
    this.giveRun(a, this.zsSlot[z]!, this.classes.chain[this.zsClass[z]!]!);
    this.zsArena[z] = NONE;
    this.zsFreeIds = grow(this.zsFreeIds, this.zsFreeCount + 1);
    this.zsFreeIds[this.zsFreeCount++] = z;
    this.liveZspages--;
    if (this.arenaUsed[a] === 0) this.dropArena(a);
  }

  private growZspages(n: number): void {
    this.zsClass = grow(this.zsClass, n);
    const cap = this.zsClass.length;
    this.zsInuse = grow(this.zsInuse, cap);
    this.zsFree = grow(this.zsFree, cap);
    this.zsArena = grow(this.zsArena, cap, NONE);
    this.zsSlot = grow(this.zsSlot, cap);
    this.zsGroup = grow(this.zsGroup, cap);
    this.zsNext = grow(this.zsNext, cap);
    this.zsPrev = grow(this.zsPrev, cap);
  }

  // ---------------------------------------------------------------------------------------------
  // Arenas

  /** The fullest arena with k free contiguous units (a new arena if none); -1 at the pool limit. */
  private arenaWithRun(k: number): number {
    // Keep filling the arena chosen last while it has room: the scan for the fullest one runs
    // once per ~256/k new zspages, not for each (O(partly used arenas) per scan).
    const last = this.fillArena;
    if (last >= 0 && this.arenaBuf[last] != null && this.arenaMaxRun[last]! >= k) return last;
    let best = -1;
    for (const a of this.partial) {
      if (this.arenaMaxRun[a]! >= k && (best < 0 || this.arenaUsed[a]! > this.arenaUsed[best]!)) best = a;
    }
    if (best >= 0) { this.fillArena = best; return best; }
    const units = this.classes.arenaUnits;
    const bytes = units * this.pageSize;
    if (this.maxBytes > 0 && this.totalSize() + bytes > this.maxBytes) return -1;
    const a = this.arenaFreeIds.length > 0 ? this.arenaFreeIds.pop()! : this.arenaBuf.length;
    // allocUnsafeSlow: a buffer of its own (not a slice of Node's shared pool), so dropping the
    // arena really releases its memory. Contents are irrelevant until written.
    this.arenaBuf[a] = Buffer.allocUnsafeSlow(bytes);
    this.arenaUnits[a] = new Uint8Array(units);
    this.arenaUsed[a] = 0;
    this.arenaMaxRun[a] = Math.min(units, MAX_CHAIN);
    this.arenaFirstFree[a] = 0;
    this.partial.push(a);
    this.arenaInPartial[a] = true;
    this.liveArenas++;
    this.fillArena = a;
    return a;
  }

  /** Marks the first run of k free units in arena a as used; returns its first unit. */
  private takeRun(a: number, k: number): number {
    const map = this.arenaUnits[a]!;
    const first = this.arenaFirstFree[a]!;
    let start = first;
    for (let u = first; u < map.length; u++) {
      if (map[u] !== 0) { start = u + 1; continue; }
      if (u - start + 1 === k) break;
    }
    map.fill(1, start, start + k);
    this.arenaUsed[a]! += k;
    if (start === first) {
      let f = start + k;
      while (f < map.length && map[f] !== 0) f++;
      this.arenaFirstFree[a] = f;
    }
    this.updateRun(a);
    return start;
  }

  private giveRun(a: number, start: number, k: number): void {
    this.arenaUnits[a]!.fill(0, start, start + k);
    this.arenaUsed[a]! -= k;
    if (start < this.arenaFirstFree[a]!) this.arenaFirstFree[a] = start;
    this.updateRun(a);
  }

  /**
   * Recomputes the arena's longest free run, capped at MAX_CHAIN, scanning from its first free
   * unit and stopping at the cap: while an arena fills front to back this reads a few bytes, not
   * the whole unit map (it ran once per new zspage: 2 us per stored page of the 4 KiB class).
   */
  private updateRun(a: number): void {
    const map = this.arenaUnits[a]!;
    let best = 0, run = 0;
    for (let u = this.arenaFirstFree[a]!; u < map.length && best < MAX_CHAIN; u++) {
      run = map[u] === 0 ? run + 1 : 0;
      if (run > best) best = run;
    }
    this.arenaMaxRun[a] = best;
    const partly = this.arenaUsed[a]! < map.length;
    if (partly !== this.arenaInPartial[a]) {
      this.arenaInPartial[a] = partly;
      if (partly) this.partial.push(a); else removeValue(this.partial, a);
    }
  }

  private dropArena(a: number): void {
    if (this.fillArena === a) this.fillArena = -1;
    removeValue(this.partial, a);
    this.arenaInPartial[a] = false;
    this.arenaBuf[a] = null;
    this.arenaUnits[a] = null;
    this.arenaFreeIds.push(a);
    this.liveArenas--;
  }

  // ---------------------------------------------------------------------------------------------
  // Compaction

  /**
   * Moves objects out of sparse zspages into fuller ones of the same class (freeing the emptied
   * zspages), then moves whole zspages out of sparse arenas into runs of free units in fuller
   * arenas (freeing the emptied arenas). Every move copies bytes and updates one handle cell
   * (objHandle for an object, zsArena/zsSlot for a zspage); ids held by callers stay valid.
   *
   * Work is bounded so a call never stalls the caller for long: at most `budget` objects (and
   * budget / 16 zspages) are moved; call again to go on. Measured with the default budget (16 Ki
   * objects) on 2 Mi objects of which 2/3 were freed: 40-50 ms per call. Selection is O(1) per zspage: the source
   * is the head of the sparsest non-empty fullness group, the destination the head of the fullest
   * non-full one (zsmalloc's rule), not a global minimum/maximum. One pass over the object ids
   * builds the zspage -> objects map (O(ids), ~4 ms per million).
   */
  compact(budget = 1 << 14): CompactResult {
    const r: CompactResult = { moved_objects: 0, freed_zspages: 0, moved_zspages: 0, freed_arenas: 0 };
    const arenasBefore = this.liveArenas;
    // The object map below costs a pass over every id (~4 ms per million): build it only when
    // some class can actually free a zspage (its partial zspages' free slots add up to one).
    if (this.classes.count > 0 && !this.anyClassCompactable()) {
      r.moved_zspages = this.compactArenas(Math.max(1, budget >>> 4));
      r.freed_arenas = arenasBefore - this.liveArenas;
      return r;
    }
    // Reused between calls: allocating ~4 B per id each step showed up as GC pauses of ~9 ms.
    if (this.cHead.length < this.zsHigh) this.cHead = new Int32Array(Math.ceil(this.zsHigh * 1.25));
    if (this.cNext.length < this.objHandle.length) this.cNext = new Int32Array(Math.ceil(this.objHandle.length * 1.25));
    const head = this.cHead.fill(-1, 0, this.zsHigh);
    const next = this.cNext;
    for (let id = 0; id < this.objHandle.length; id++) {
      const h = this.objHandle[id]!;
      if (h === NO_HANDLE) continue;
      const z = handleZspage(h);
      next[id] = head[z]!;
      head[z] = id;
    }
    for (let c = 0; c < this.classes.count && r.moved_objects < budget; c++) this.compactClass(c, head, next, r, budget);
    r.moved_zspages = this.compactArenas(Math.max(1, budget >>> 4));
    r.freed_arenas = arenasBefore - this.liveArenas;
    this.movedObjects += r.moved_objects;
    // Kept while compaction is making progress (steps come back-to-back); given back when a step
    // found nothing to do, so an idle pool holds no scratch.
    if (r.moved_objects === 0 && r.moved_zspages === 0) { this.cHead = new Int32Array(0); this.cNext = new Int32Array(0); }
    return r;
  }

  /** True when some class's partial zspages have at least one zspage's worth of free slots. */
  private anyClassCompactable(): boolean {
    for (let c = 0; c < this.classes.count; c++) {
      const cap = this.classes.objsPerZspage[c]!;
      const base = c * GROUPS;
      let free = 0;
      for (let g = 1; g < FULL; g++) {
        for (let z = this.groupHead[base + g]!; z >= 0; z = this.zsNext[z]!) {
          free += cap - this.zsInuse[z]!;
          if (free >= cap) return true;
        }
      }
    }
    return false;
  }

  private compactClass(c: number, head: Int32Array, next: Int32Array, r: CompactResult, budget: number): void {
    const cap = this.classes.objsPerZspage[c]!;
    const size = this.classes.size[c]!;
    const base = c * GROUPS;
    // Free slots over the partial zspages of this class. Moving an object keeps the total;
    // freeing an emptied source removes `cap` of them. A source can be emptied into the others
    // exactly when the total is at least `cap` (free - (cap - inuse) >= inuse).
    let free = 0;
    for (let g = 1; g < FULL; g++) {
      for (let z = this.groupHead[base + g]!; z >= 0; z = this.zsNext[z]!) free += cap - this.zsInuse[z]!;
    }
    while (free >= cap && r.moved_objects < budget) {
      let src = -1;
      for (let g = 1; g < FULL && src < 0; g++) src = this.groupHead[base + g]!;
      if (src < 0) return;
      const srcBuf = this.arenaBuf[this.zsArena[src]!]!;
      // Park src in the full group while it is emptied, so it is never chosen as a destination.
      this.unlink(src);
      this.link(src, FULL);
      for (let id = head[src]!; id >= 0;) {
        const nid = next[id]!;
        const srcOff = this.objOffset(src, handleIndex(this.objHandle[id]!));
        let dst = -1;
        for (let g = FULL - 1; g >= 1 && dst < 0; g--) dst = this.groupHead[base + g]!;
        const idx = this.zsFree[dst]!;
        const dstBuf = this.arenaBuf[this.zsArena[dst]!]!;
        const dstOff = this.objOffset(dst, idx);
        this.zsFree[dst] = dstBuf[dstOff]! | (dstBuf[dstOff + 1]! << 8);
        srcBuf.copy(dstBuf, dstOff, srcOff, srcOff + size);
        this.zsInuse[dst]++;
        this.regroup(dst);
        this.objHandle[id] = packHandle(dst, idx);
        next[id] = head[dst]!;
        head[dst] = id;
        this.zsInuse[src]--;
        r.moved_objects++;
        id = nid;
      }
      head[src] = -1;
      this.freeZspage(src);
      free -= cap;
      r.freed_zspages++;
    }
  }

  /**
   * Empties the sparsest arenas by moving their zspages into runs of free units in the fullest
   * arenas, at most `budget` zspages per call. Partly used arenas are sorted once by use; sources
   * are taken from the sparse end and destinations from the full end until the two meet. An arena
   * is only evacuated when every one of its zspages found a place.
   */
  private compactArenas(budget: number): number {
    const list = this.partial.slice().sort((x, y) => this.arenaUsed[x]! - this.arenaUsed[y]!);
    if (list.length < 2) return 0;
    const byArena = new Map<number, number[]>(); // per partly used arena (not per page)
    for (const a of list) byArena.set(a, []);
    for (let z = 0; z < this.zsHigh; z++) {
      const a = this.zsArena[z]!;
      if (a !== NONE) byArena.get(a)?.push(z);
    }
    let moved = 0;
    let hi = list.length - 1; // destinations: list[lo+1 .. hi], fullest at hi
    for (let lo = 0; lo < hi && moved < budget; lo++) {
      const src = list[lo]!;
      const zs = byArena.get(src)!;
      const plan: number[] = [];
      for (const z of zs) {
        const k = this.classes.chain[this.zsClass[z]!]!;
        while (hi > lo && this.arenaUsed[list[hi]!] === this.classes.arenaUnits) hi--; // full: done as a destination
        let dst = -1;
        for (let j = hi; j > lo; j--) if (this.arenaMaxRun[list[j]!]! >= k) { dst = list[j]!; break; }
        if (dst < 0) break;
        plan.push(z, dst, this.takeRun(dst, k));
      }
      if (plan.length / 3 < zs.length) {
        for (let i = 0; i < plan.length; i += 3) this.giveRun(plan[i + 1]!, plan[i + 2]!, this.classes.chain[this.zsClass[plan[i]!]!]!);
        break; // the free space left is too fragmented for this arena's zspages
      }
      for (let i = 0; i < plan.length; i += 3) {
        const z = plan[i]!, dst = plan[i + 1]!, unit = plan[i + 2]!;
        const k = this.classes.chain[this.zsClass[z]!]!;
        const from = this.zsSlot[z]! * this.pageSize;
        this.arenaBuf[src]!.copy(this.arenaBuf[dst]!, unit * this.pageSize, from, from + k * this.pageSize);
        this.giveRun(src, this.zsSlot[z]!, k);
        this.zsArena[z] = dst;
        this.zsSlot[z] = unit;
        moved++;
      }
      if (this.arenaUsed[src] === 0) this.dropArena(src);
    }
    return moved;
  }

  // ---------------------------------------------------------------------------------------------
  // White-box checks for tests

  /** Verifies internal invariants; throws on the first violation. */
  checkInvariants(): void {
    const counted = new Uint32Array(this.zsHigh);
    for (let id = 0; id < this.objHandle.length; id++) {
      const h = this.objHandle[id]!;
      if (h === NO_HANDLE) continue;
      const z = handleZspage(h);
      if (z >= this.zsHigh || this.zsArena[z] === NONE) throw new Error(`object ${id} in dead zspage ${z}`);
      counted[z]!++;
    }
    let live = 0;
    for (let z = 0; z < this.zsHigh; z++) {
      if (this.zsArena[z] === NONE) { if (counted[z]) throw new Error(`dead zspage ${z} has objects`); continue; }
      live++;
      if (counted[z] !== this.zsInuse[z]) throw new Error(`zspage ${z}: inuse ${this.zsInuse[z]} != ${counted[z]}`);
      if (this.zsGroup[z] !== this.groupOf(z)) throw new Error(`zspage ${z} in wrong group`);
      if (this.arenaBuf[this.zsArena[z]!] == null) throw new Error(`zspage ${z} in dropped arena`);
    }
    if (live !== this.liveZspages) throw new Error(`liveZspages ${this.liveZspages} != ${live}`);
    let arenas = 0;
    for (const b of this.arenaBuf) if (b) arenas++;
    if (arenas !== this.liveArenas) throw new Error(`liveArenas mismatch`);
  }
}

function removeValue(list: number[], v: number): void {
  const i = list.indexOf(v);
  if (i >= 0) { list[i] = list[list.length - 1]!; list.pop(); }
}
