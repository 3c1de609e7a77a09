/**
 * PageStore: the frontswap contract over a compressed, deduplicating pool.
 *
 *   area slot map (Uint32Array per area, one cell per page slot)
 *     0            never written / invalidated (a hole: loads miss)
 *     SAME | w     same-filled page: word w of the WordTable (w = 0 is the zero word)
 *     id + 1       object id in the pool, shared by every slot with the same content
 *
 *   object columns (per id): refs u8 (255 = "see the overflow table"), len u16|u32,
 *   fingerprint lo/hi u32 (KeyColumns), and the pool's handle (u32): 15 B per object at 4 KiB
 *   pages, plus the index cells. Objects shared by more than 254 slots keep their count in a
 *   small Map (one entry per such object, never per page).
 *   FingerprintIndex per dedup domain: fingerprint -> ids (4 B/cell, load <= 0.8).
 *
 * Store: same-filled? -> keep the word. Else fingerprint (XXH3-64); for each id in the domain's
 * index with that fingerprint, confirm by comparing bytes (decompressing into scratch) — only a
 * confirmed match is shared (`verify`, on by default). Otherwise compress into scratch with
 * capacity 7/8 page (a page that does not save 1/8 is kept raw), allocate in the pool, copy.
 * The new reference is taken before the slot's old one is dropped, so rewriting a slot with its
 * own content never frees it. A rejected store leaves the slot as it was.
 *
 * Load: decompress straight into the caller's buffer and check the XXH3 of the result against
 * the object's fingerprint (`checkLoads`, on by default): a corrupt object is ERR_DECOMPRESS,
 * never wrong data.
 *
 * Dedup domains: by default each area dedups only within itself (sharing across tenants leaks
 * content through timing); `sharedDedup` makes one domain of all areas. An object belongs to
 * the domain of the area that stored it, and only slots of that domain reference it.
 *
 * Validation happens once at the public methods; private helpers trust their arguments.
 */
import { ZsPool, type CompactResult, type ObjectId } from '../engine/alloc/zspool.js';
import { grow, growable } from '../engine/alloc/typed.js';
import { parseCodec, type Codec } from '../engine/codec/codec.js';
import { fillWord, isSameFilled, wordHi, wordLo } from '../engine/codec/same-filled.js';
import { Fingerprinter, type FingerprintFn, xxh3Fingerprint } from '../engine/dedup/fingerprint.js';
import { FingerprintIndex, KeyColumns } from '../engine/dedup/index.js';
import { ZdedupError, checkUint } from './errors.js';
import type { PageStoreStats } from './stats.js';

export type { PageStoreStats } from './stats.js';
export type { CompactResult } from '../engine/alloc/zspool.js';

export type AreaId = number & { readonly __brand: 'AreaId' };
export type StoreResult = 'stored' | 'reject_pool_limit' | 'reject_alloc_fail';
export type LoadResult = 'hit' | 'miss';
/** pageKind(): 0 hole (never written or invalidated), 1 zero page, 2 data. */
export type PageKind = 0 | 1 | 2;

export interface PageStoreOptions {
  /** Bytes per page: a power of two, 4096..65536. Default 4096. */
  pageSize?: number;
  /** 'lz4' (default), 'zstd', 'zstd:LEVEL' or 'none'. */
  codec?: string;
  /** Compare bytes before sharing an object found by fingerprint. Default true. Turning it off
   *  trusts 64-bit fingerprints: faster stores, and a (tiny) chance of returning wrong data. */
  verify?: boolean;
  /** Check each loaded page's XXH3 against its fingerprint. Default true (~0.4 µs per 4 KiB). */
  checkLoads?: boolean;
  /** One dedup domain for all areas instead of one per area. Default false. */
  sharedDedup?: boolean;
  /** Upper bound of pool_total_size in bytes; 0 = unbounded. Default 0. */
  maxPoolBytes?: number;
  /** Replaces the fingerprint function (tests force collisions with it). */
  fingerprint?: FingerprintFn;
}

/** Metadata per page slot, written or not: the area's u32 slot-map cell. */
export const SLOT_METADATA_BYTES = 4;
/**
 * Metadata per stored object, for projections (zdedup analyze): refs 1 + length 2 +
 * fingerprint 8 + pool handle 4 = 15 fixed, plus the fingerprint index cell (4 B at load
 * 0.64..0.8), zspage and arena bookkeeping and the columns' growth step. 23 is what `npm run
 * bench` measured on its real-process image (135,679 objects: (22.9 - 4) x 161,265 / 135,679 ≈ 22.5);
 * see bench/results/page-store-*.md.
 */
export const OBJECT_METADATA_BYTES = 23;

const SAME = 0x80000000;
const REFS_BIG = 255;
const MAX_AREA_PAGES = 2 ** 31;

/** Same-filled words: a tiny refcounted table; word 0 is the zero word and is never freed. */
class WordTable {
  readonly keys = new KeyColumns();
  private refs = new Uint32Array(0);
  private readonly index: FingerprintIndex;
  private freeIds: number[] = [];
  private high = 1;
  constructor() {
    this.keys.ensure(16);
    this.refs = grow(this.refs, 16);
    this.index = new FingerprintIndex(this.keys, 16);
    this.index.insert(0); // zero word, id 0, lo = hi = 0
  }
  acquire(lo: number, hi: number): number {
    this.index.probeStart(lo, hi);
    let w = this.index.probeNext(); // keys are the words themselves: a match is exact
    if (w < 0) {
      w = this.freeIds.length > 0 ? this.freeIds.pop()! : this.high++;
      this.keys.ensure(w + 1);
      this.refs = grow(this.refs, this.keys.lo.length);
      this.keys.lo[w] = lo;
      this.keys.hi[w] = hi;
      this.index.insert(w);
    }
    this.refs[w]!++;
    return w;
  }
  release(w: number): void {
    if (--this.refs[w]! === 0 && w !== 0) {
      this.index.remove(w);
      this.freeIds.push(w);
    }
  }
  bytes(): number {
    return this.keys.bytes() + this.refs.byteLength + this.index.bytes() + this.freeIds.length * 8;
  }
}

export class PageStore {
  readonly pageSize: number;
  readonly codec: Codec;
  readonly verify: boolean;
  readonly checkLoads: boolean;
  readonly sharedDedup: boolean;
  /** Why the last store (or batch) was rejected, when it was. */
  lastReject: StoreResult = 'stored';

  private readonly pool: ZsPool;
  private readonly keys = new KeyColumns();
  private refs = growable(Uint8Array);
  private readonly bigRefs = new Map<number, number>(); // refs of objects with >= REFS_BIG slots
  private lens: Uint16Array | Uint32Array;
  private nextFreeId = -1; // free ids chained through keys.lo (a free id's key = next free + 1)
  private highId = 0;
  private readonly words = new WordTable();
  private readonly fp: Fingerprinter;
  private readonly scratch: Buffer; // compressed output / decompressed candidate
  private readonly incompressibleCap: number;

  private slotMaps: (Uint32Array | undefined)[] = [];
  private domainIndex: FingerprintIndex[] = [];
  // per-area live counts (one number per area, not per page)
  private areaStored: number[] = [];
  private areaSame: number[] = [];
  private areaZero: number[] = [];
  private names: string[] = [];
  private byName = new Map<string, number>();

  private c = {
    stored_pages: 0, same_filled_pages: 0, zero_pages: 0, unique_objects: 0,
    stored_incompressible_pages: 0, compressed_bytes: 0, reject_alloc_fail: 0, pool_limit_hit: 0,
    decompress_fail: 0, store_calls: 0, load_calls: 0, load_hits: 0, load_misses: 0,
    invalidated_pages: 0, dedup_hits: 0, verify_mismatch: 0,
  };

  constructor(opts: PageStoreOptions = {}) {
    const ps = opts.pageSize ?? 4096;
    if (!Number.isSafeInteger(ps) || ps < 4096 || ps > 65536 || (ps & (ps - 1)) !== 0) {
      throw new ZdedupError('ERR_INVALID_ARGUMENT', `page size must be a power of two from 4096 to 65536, got ${String(ps)}`);
    }
    if (opts.maxPoolBytes !== undefined) checkUint('maxPoolBytes', opts.maxPoolBytes);
    this.pageSize = ps;
    this.codec = parseCodec(opts.codec ?? 'lz4');
    this.verify = opts.verify ?? true;
    this.checkLoads = opts.checkLoads ?? true;
    this.sharedDedup = opts.sharedDedup ?? false;
    this.fp = new Fingerprinter(opts.fingerprint ?? xxh3Fingerprint());
    this.pool = new ZsPool(ps, opts.maxPoolBytes ?? 0);
    // Lengths up to pageSize: u16 holds them for pages up to 32 KiB; 64 KiB pages need u32.
    this.lens = ps <= 32768 ? growable(Uint16Array) : growable(Uint32Array);
    this.scratch = Buffer.alloc(ps * 2);
    this.incompressibleCap = ps - ps / 8;
    if (this.sharedDedup) this.domainIndex.push(new FingerprintIndex(this.keys));
  }

  // ---------------------------------------------------------------------------------------------
  // Areas

  /** Defines an area of `pages` slots (4 bytes of metadata each until written). */
  createArea(name: string, pages: number): AreaId {
    if (typeof name !== 'string') throw new ZdedupError('ERR_INVALID_ARGUMENT', 'area name must be a string');
    checkUint('pages', pages);
    if (pages < 1 || pages > MAX_AREA_PAGES) {
      throw new ZdedupError('ERR_INVALID_ARGUMENT', `area size must be 1..${MAX_AREA_PAGES} pages, got ${pages}`);
    }
    if (this.byName.has(name)) throw new ZdedupError('ERR_AREA_EXISTS', `area "${name}" already exists`);
    const id = this.slotMaps.length;
    this.slotMaps.push(new Uint32Array(pages));
    this.areaStored.push(0); this.areaSame.push(0); this.areaZero.push(0);
    this.names.push(name);
    this.byName.set(name, id);
    if (!this.sharedDedup) this.domainIndex.push(new FingerprintIndex(this.keys));
    return id as AreaId;
  }

  /** The area named `name`; ERR_UNKNOWN_AREA if none. */
  area(name: string): AreaId {
    const id = this.byName.get(name);
    if (id === undefined) throw new ZdedupError('ERR_UNKNOWN_AREA', `no area named "${name}"`);
    return id as AreaId;
  }

  areaPages(area: AreaId): number {
    return this.slotsOf(area).length;
  }

  areas(): { id: AreaId; name: string; pages: number }[] {
    const out: { id: AreaId; name: string; pages: number }[] = [];
    this.slotMaps.forEach((m, i) => { if (m) out.push({ id: i as AreaId, name: this.names[i]!, pages: m.length }); });
    return out;
  }

  /** Drops every page of the area and forgets the area (its id is not reused). */
  deleteArea(area: AreaId): void {
    this.invalidateArea(area);
    this.slotMaps[area] = undefined;
    this.byName.delete(this.names[area]!);
  }

  // ---------------------------------------------------------------------------------------------
  // Public API: store / load / invalidate

  /** Stores one page at slot `offset`. On a reject the slot keeps its previous content. */
  store(area: AreaId, offset: number, page: Uint8Array): StoreResult {
    const slots = this.slotsOf(area);
    this.checkIndex(offset, 1, slots.length);
    this.checkPage(page, this.pageSize);
    return this.storeOne(area, slots, offset, page, 0);
  }

  /** Stores pages.length / pageSize consecutive pages; returns how many were stored (stops at the first reject). */
  storeBatch(area: AreaId, offset: number, pages: Uint8Array): number {
    const slots = this.slotsOf(area);
    const P = this.pageSize;
    if (!(pages instanceof Uint8Array) || pages.length % P !== 0) {
      throw new ZdedupError('ERR_PAGE_LENGTH', `batch length must be a multiple of ${P}`);
    }
    const n = pages.length / P;
    this.checkIndex(offset, n, slots.length);
    for (let i = 0; i < n; i++) {
      if (this.storeOne(area, slots, offset + i, pages, i * P) !== 'stored') return i;
    }
    return n;
  }

  /** Loads slot `offset` into `into` (>= pageSize bytes). On a miss `into` is left untouched. */
  load(area: AreaId, offset: number, into: Uint8Array): LoadResult {
    const slots = this.slotsOf(area);
    this.checkIndex(offset, 1, slots.length);
    this.checkInto(into, this.pageSize);
    return this.loadOne(slots[offset]!, into, 0);
  }

  /** Loads `count` consecutive slots into `into`; misses are zero-filled. Returns the number of hits. */
  loadBatch(area: AreaId, offset: number, count: number, into: Uint8Array): number {
    const slots = this.slotsOf(area);
    this.checkIndex(offset, count, slots.length);
    const P = this.pageSize;
    this.checkInto(into, count * P);
    let hits = 0;
    for (let i = 0; i < count; i++) {
      if (this.loadOne(slots[offset + i]!, into, i * P) === 'hit') hits++;
      else into.fill(0, i * P, (i + 1) * P);
    }
    return hits;
  }

  invalidatePage(area: AreaId, offset: number): void {
    const slots = this.slotsOf(area);
    this.checkIndex(offset, 1, slots.length);
    this.clear(area, slots, offset);
  }

  invalidateRange(area: AreaId, offset: number, count: number): void {
    const slots = this.slotsOf(area);
    this.checkIndex(offset, count, slots.length);
    for (let i = 0; i < count; i++) this.clear(area, slots, offset + i);
  }

  /** Drops every page of the area (frontswap invalidate_area, i.e. swapoff). */
  invalidateArea(area: AreaId): void {
    const slots = this.slotsOf(area);
    for (let i = 0; i < slots.length; i++) if (slots[i] !== 0) this.clear(area, slots, i);
  }

  /** 0 hole, 1 zero page, 2 data. */
  pageKind(area: AreaId, offset: number): PageKind {
    const slots = this.slotsOf(area);
    this.checkIndex(offset, 1, slots.length);
    const v = slots[offset]!;
    if (v === 0) return 0;
    if (v === SAME) return 1; // word 0 is the zero word
    return 2;
  }

  /**
   * End (exclusive) of the run of slots starting at `offset` that have the same pageKind, looking
   * no further than `limit`. For BLOCK_STATUS: one tight loop over the slot map instead of a
   * validated call per page.
   */
  kindRunEnd(area: AreaId, offset: number, limit: number): number {
    const slots = this.slotsOf(area);
    this.checkIndex(offset, 1, slots.length);
    if (!Number.isSafeInteger(limit) || limit <= offset) throw new ZdedupError('ERR_INVALID_ARGUMENT', `limit must be an integer > offset, got ${String(limit)}`);
    const end = Math.min(limit, slots.length);
    const v0 = slots[offset]!;
    const k0 = v0 === 0 ? 0 : v0 === SAME ? 1 : 2;
    let i = offset + 1;
    if (k0 === 0) while (i < end && slots[i] === 0) i++;
    else if (k0 === 1) while (i < end && slots[i] === SAME) i++;
    else while (i < end && slots[i] !== 0 && slots[i] !== SAME) i++;
    return i;
  }

  /** Stores the zero page in `count` slots from `offset` (WRITE_ZEROES with NO_HOLE): no data is passed or hashed. */
  storeZeroRange(area: AreaId, offset: number, count: number): void {
    const slots = this.slotsOf(area);
    this.checkIndex(offset, count, slots.length);
    const c = this.c;
    for (let i = offset; i < offset + count; i++) {
      const old = slots[i]!;
      c.store_calls++;
      if (old === SAME) continue; // already the zero page
      this.words.acquire(0, 0);
      this.release(area, old);
      slots[i] = SAME;
      this.count(area, old, 1);
      c.same_filled_pages++; c.zero_pages++;
      this.areaSame[area]!++; this.areaZero[area]!++;
    }
  }

  /** Live counts of one area: stored (same-filled included), same-filled, zero, and never-written/invalidated pages. */
  areaStats(area: AreaId): { pages: number; stored_pages: number; same_filled_pages: number; zero_pages: number; hole_pages: number } {
    const slots = this.slotsOf(area);
    const stored = this.areaStored[area]!;
    return { pages: slots.length, stored_pages: stored, same_filled_pages: this.areaSame[area]!, zero_pages: this.areaZero[area]!, hole_pages: slots.length - stored };
  }

  /** One bounded compaction step (at most `budget` objects moved); repeat while it moves something. */
  compact(budget?: number): CompactResult {
    return this.pool.compact(budget);
  }

  /**
   * Compaction policy: compacts when the pool holds more than `minWasteBytes` (default 8 MiB)
   * and more than `maxWasteFraction` (default 1/8) of its size beyond the compressed bytes it
   * stores — i.e. when frees have left sparse zspages and arenas. Returns the result, or null when
   * no compaction was needed. One call does a bounded step (see ZsPool.compact); callers repeat
   * while it returns work done.
   */
  maybeCompact(minWasteBytes = 8 << 20, maxWasteFraction = 1 / 8): CompactResult | null {
    const pool = this.pool.totalSize();
    const waste = pool - this.c.compressed_bytes;
    if (waste < minWasteBytes || waste < pool * maxWasteFraction) return null;
    return this.pool.compact();
  }

  stats(): PageStoreStats {
    const c = this.c;
    const P = this.pageSize;
    const pool = this.pool.totalSize();
    const meta = this.metadataBytes();
    const dedupSlots = c.stored_pages - c.same_filled_pages;
    return {
      page_size: P,
      stored_pages: c.stored_pages,
      same_filled_pages: c.same_filled_pages,
      zero_pages: c.zero_pages,
      duplicate_pages: dedupSlots - c.unique_objects,
      unique_objects: c.unique_objects,
      stored_incompressible_pages: c.stored_incompressible_pages,
      pool_total_size: pool,
      logical_bytes: c.stored_pages * P,
      compressed_bytes: c.compressed_bytes,
      metadata_bytes: meta,
      compression_ratio: c.compressed_bytes > 0 ? (c.unique_objects * P) / c.compressed_bytes : 1,
      dedup_ratio: c.unique_objects > 0 ? dedupSlots / c.unique_objects : 1,
      effective_ratio: (c.stored_pages * P) / (pool + meta),
      reject_alloc_fail: c.reject_alloc_fail,
      pool_limit_hit: c.pool_limit_hit,
      decompress_fail: c.decompress_fail,
      written_back_pages: 0,
      store_calls: c.store_calls,
      load_calls: c.load_calls,
      load_hits: c.load_hits,
      load_misses: c.load_misses,
      invalidated_pages: c.invalidated_pages,
      dedup_hits: c.dedup_hits,
      verify_mismatch: c.verify_mismatch,
      pages_compacted: this.pool.movedObjects,
      arenas: this.pool.liveArenas,
      zspages: this.pool.liveZspages,
      areas: this.byName.size,
    };
  }

  /** Bytes of metadata: slot maps, object columns, indexes, word table, pool bookkeeping. */
  metadataBytes(): number {
    let b = this.keys.bytes() + this.refs.byteLength + this.lens.byteLength + this.words.bytes() + this.pool.metadataBytes() +
      this.bigRefs.size * 40; // ~40 B per Map entry, one per object shared by >= 255 slots
    for (const m of this.slotMaps) if (m) b += m.byteLength;
    for (const ix of this.domainIndex) b += ix.bytes();
    return b;
  }

  // ---------------------------------------------------------------------------------------------
  // Core

  private storeOne(area: number, slots: Uint32Array, offset: number, src: Uint8Array, at: number): StoreResult {
    const P = this.pageSize;
    const c = this.c;
    c.store_calls++;
    const page = at === 0 && src.length === P ? src : src.subarray(at, at + P);
    const old = slots[offset]!;

    if (isSameFilled(page, P)) {
      const lo = wordLo(page), hi = wordHi(page);
      const w = this.words.acquire(lo, hi);
      this.release(area, old);
      slots[offset] = SAME | w;
      this.count(area, old, 1);
      c.same_filled_pages++;
      this.areaSame[area]!++;
      if (w === 0) { c.zero_pages++; this.areaZero[area]!++; }
      return 'stored';
    }

    this.fp.hash(page, P);
    const lo = this.fp.lo, hi = this.fp.hi;
    const index = this.domainIndex[this.sharedDedup ? 0 : area]!;
    index.probeStart(lo, hi);
    for (let id = index.probeNext(); id >= 0; id = index.probeNext()) {
      if (this.verify && !this.sameContent(id, page)) { c.verify_mismatch++; continue; }
      c.dedup_hits++;
      if (old === id + 1) return 'stored'; // same content rewritten in place
      this.incRef(id);
      this.release(area, old);
      slots[offset] = id + 1;
      this.count(area, old, 1);
      return 'stored';
    }

    // A new object.
    let len = this.codec.compress(page, P, this.scratch, this.incompressibleCap);
    const raw = len === 0;
    if (raw) len = P;
    const id = this.newId();
    if (!this.pool.alloc(id, len)) {
      this.freeId(id);
      const why: StoreResult = this.pool.maxBytes > 0 ? 'reject_pool_limit' : 'reject_alloc_fail';
      if (why === 'reject_pool_limit') c.pool_limit_hit++; else c.reject_alloc_fail++;
      this.lastReject = why;
      return why;
    }
    this.pool.locate(id);
    this.pool.locBuf.set(raw ? page : this.scratch.subarray(0, len), this.pool.locOff);
    this.lens[id] = len;
    this.keys.lo[id] = lo;
    this.keys.hi[id] = hi;
    this.refs[id] = 1;
    index.insert(id);
    c.unique_objects++;
    c.compressed_bytes += len;
    if (raw) c.stored_incompressible_pages++;
    this.release(area, old);
    slots[offset] = id + 1;
    this.count(area, old, 1);
    return 'stored';
  }

  /** True if object `id` holds exactly `page`. Decompresses into scratch when compressed. */
  private sameContent(id: number, page: Uint8Array): boolean {
    const P = this.pageSize;
    const len = this.lens[id]!;
    this.pool.locate(id as ObjectId);
    const buf = this.pool.locBuf, off = this.pool.locOff;
    if (len === P) return buf.compare(page, 0, P, off, off + P) === 0;
    const out = this.scratch;
    if (!this.codec.decompress(buf.subarray(off, off + len), len, out, P)) {
      this.c.decompress_fail++; // corrupt object: never share with it
      return false;
    }
    return out.compare(page, 0, P, 0, P) === 0;
  }

  private loadOne(v: number, into: Uint8Array, at: number): LoadResult {
    const P = this.pageSize;
    const c = this.c;
    c.load_calls++;
    if (v === 0) { c.load_misses++; return 'miss'; }
    c.load_hits++;
    const dst = at === 0 && into.length === P ? into : into.subarray(at, at + P);
    if (v & SAME) {
      const w = v & ~SAME;
      fillWord(dst, P, this.words.keys.lo[w]!, this.words.keys.hi[w]!);
      return 'hit';
    }
    const id = v - 1;
    const len = this.lens[id]!;
    this.pool.locate(id as ObjectId);
    const buf = this.pool.locBuf, off = this.pool.locOff;
    if (len === P) buf.copy(dst, 0, off, off + P);
    else if (!this.codec.decompress(buf.subarray(off, off + len), len, dst, P)) {
      c.decompress_fail++;
      throw new ZdedupError('ERR_DECOMPRESS', `object ${id} failed to decompress (${this.codec.spec}, ${len} bytes)`);
    }
    if (this.checkLoads) {
      this.fp.hash(dst, P);
      if (this.fp.lo !== this.keys.lo[id] || this.fp.hi !== this.keys.hi[id]) {
        c.decompress_fail++;
        throw new ZdedupError('ERR_DECOMPRESS', `object ${id} does not match its fingerprint: corrupt`);
      }
    }
    return 'hit';
  }

  private clear(area: number, slots: Uint32Array, offset: number): void {
    const old = slots[offset]!;
    if (old === 0) return;
    this.release(area, old);
    slots[offset] = 0;
    this.count(area, old, 0);
    this.c.invalidated_pages++;
  }

  /** Drops the reference held by a slot value (0, SAME|w or id+1). Does not touch counters of slots. */
  private release(area: number, v: number): void {
    if (v === 0) return;
    if (v & SAME) {
      const w = v & ~SAME;
      this.words.release(w);
      this.c.same_filled_pages--;
      this.areaSame[area]!--;
      if (w === 0) { this.c.zero_pages--; this.areaZero[area]!--; }
      return;
    }
    const id = v - 1;
    if (this.decRef(id) > 0) return;
    this.domainIndex[this.sharedDedup ? 0 : area]!.remove(id);
    this.pool.free(id as ObjectId);
    const len = this.lens[id]!;
    this.c.unique_objects--;
    this.c.compressed_bytes -= len;
    if (len === this.pageSize) this.c.stored_incompressible_pages--;
    this.freeId(id);
  }

  /** Keeps stored_pages right when a slot goes from `old` to empty (now = 0) or filled (now = 1). */
  private count(area: number, old: number, now: 0 | 1): void {
    const d = now - (old !== 0 ? 1 : 0);
    this.c.stored_pages += d;
    this.areaStored[area]! += d;
  }

  private incRef(id: number): void {
    const r = this.refs[id]!;
    if (r < REFS_BIG - 1) this.refs[id] = r + 1;
    else if (r === REFS_BIG - 1) { this.refs[id] = REFS_BIG; this.bigRefs.set(id, REFS_BIG); }
    else this.bigRefs.set(id, this.bigRefs.get(id)! + 1);
  }

  /** Drops one reference; returns the references left. */
  private decRef(id: number): number {
    const r = this.refs[id]!;
    if (r < REFS_BIG) { this.refs[id] = r - 1; return r - 1; }
    const n = this.bigRefs.get(id)! - 1;
    if (n < REFS_BIG) { this.bigRefs.delete(id); this.refs[id] = n; } else this.bigRefs.set(id, n);
    return n;
  }

  private refCount(id: number): number {
    const r = this.refs[id]!;
    return r < REFS_BIG ? r : this.bigRefs.get(id)!;
  }

  private newId(): ObjectId {
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
        this.keys.ensure(cap);
        this.pool.ensureIds(cap);
      }
    }
    return id as ObjectId;
  }

  private freeId(id: number): void {
    this.refs[id] = 0;
    this.keys.lo[id] = this.nextFreeId + 1;
    this.nextFreeId = id;
  }

  // ---------------------------------------------------------------------------------------------
  // Validation (public edge only)

  private slotsOf(area: AreaId): Uint32Array {
    const m = typeof area === 'number' && Number.isInteger(area) && area >= 0 ? this.slotMaps[area] : undefined;
    if (!m) throw new ZdedupError('ERR_UNKNOWN_AREA', `unknown area ${String(area)}`);
    return m;
  }

  private checkIndex(offset: number, count: number, pages: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0) {
      throw new ZdedupError('ERR_INVALID_ARGUMENT', `page offset must be a non-negative integer, got ${String(offset)}`);
    }
    if (!Number.isSafeInteger(count) || count < 0) {
      throw new ZdedupError('ERR_INVALID_ARGUMENT', `page count must be a non-negative integer, got ${String(count)}`);
    }
    if (offset + count > pages) {
      throw new ZdedupError('ERR_OFFSET_RANGE', `pages ${offset}..${offset + count - 1} outside area of ${pages} pages`);
    }
  }

  private checkPage(page: Uint8Array, n: number): void {
    if (!(page instanceof Uint8Array) || page.length !== n) {
      throw new ZdedupError('ERR_PAGE_LENGTH', `page must be a Uint8Array of exactly ${n} bytes, got ${page instanceof Uint8Array ? page.length : typeof page}`);
    }
  }

  private checkInto(into: Uint8Array, n: number): void {
    if (!(into instanceof Uint8Array) || into.length < n) {
      throw new ZdedupError('ERR_PAGE_LENGTH', `destination must be a Uint8Array of at least ${n} bytes`);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // White-box hooks for tests

  /** Internal consistency check: refcounts equal slot references, counters equal recounts. */
  checkInvariants(): void {
    this.pool.checkInvariants();
    const refsSeen = new Map<number, number>();
    let stored = 0, same = 0, zero = 0;
    this.slotMaps.forEach((m, a) => {
      if (!m) return;
      let aStored = 0, aSame = 0, aZero = 0;
      for (let i = 0; i < m.length; i++) {
        const v = m[i]!;
        if (v === 0) continue;
        aStored++;
        if (v & SAME) { aSame++; if (v === SAME) aZero++; continue; }
        refsSeen.set(v - 1, (refsSeen.get(v - 1) ?? 0) + 1);
      }
      if (aStored !== this.areaStored[a] || aSame !== this.areaSame[a] || aZero !== this.areaZero[a]) {
        throw new Error(`area ${a} counts ${this.areaStored[a]}/${this.areaSame[a]}/${this.areaZero[a]} != ${aStored}/${aSame}/${aZero}`);
      }
      stored += aStored; same += aSame; zero += aZero;
    });
    if (stored !== this.c.stored_pages) throw new Error(`stored_pages ${this.c.stored_pages} != ${stored}`);
    if (same !== this.c.same_filled_pages) throw new Error(`same_filled_pages ${this.c.same_filled_pages} != ${same}`);
    if (zero !== this.c.zero_pages) throw new Error(`zero_pages ${this.c.zero_pages} != ${zero}`);
    if (refsSeen.size !== this.c.unique_objects) throw new Error(`unique_objects ${this.c.unique_objects} != ${refsSeen.size}`);
    for (const [id, n] of refsSeen) {
      if (this.refCount(id) !== n) throw new Error(`object ${id}: refs ${this.refCount(id)} != ${n} slots`);
      if (!this.pool.isAllocated(id)) throw new Error(`object ${id} referenced but not allocated`);
    }
  }

  /** Test hook: flips a byte of the object behind a slot (to prove corruption is detected). */
  corruptForTest(area: AreaId, offset: number): void {
    const v = this.slotsOf(area)[offset]!;
    if (v === 0 || v & SAME) throw new Error('slot holds no object');
    this.pool.locate((v - 1) as ObjectId);
    const i = this.pool.locOff + ((this.lens[v - 1]! / 2) | 0);
    this.pool.locBuf[i]! ^= 0x5a;
  }
}
