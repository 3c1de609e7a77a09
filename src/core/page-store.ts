/**
 * PageStore: the frontswap contract over a compressed, deduplicating store whose objects live in
 * tiers: the RAM pool (zspool) and, when one is configured, a disk tier of log segments. This file
 * is the facade — validation at the edge, slot maps, the store and load paths — over the object
 * table (objects.ts), the pool, the tier interface (src/tiers/tier.ts) and the background policy
 * (maintenance.ts: writeback, cleaning, compaction).
 *
 *   area slot map (Uint32Array per area, one cell per page slot)
 *     0            never written / invalidated (a hole: loads miss)
 *     SAME | w     same-filled page: word w of the WordTable (w = 0 is the zero word)
 *     id + 1       object id, shared by every slot with the same content
 *
 *   object id -> ObjectTable row: refs, length, fingerprint, flags (IN_RAM, IN_TIER, REFERENCED),
 *                tier location, LRU links; the RAM location is the pool's handle for the id.
 *
 * Store: same-filled? -> keep the word. Else fingerprint (XXH3-64); for each id in the domain's
 * index with that fingerprint, confirm by comparing bytes — only a confirmed match is shared
 * (`verify`). Otherwise compress (a page that does not save 1/8 is kept raw) and place the new
 * object: in RAM while the pool has room; with a tier, once the pool hit its limit, straight into
 * the tier until the writer has brought the pool below the accept threshold (zswap's hysteresis).
 * The new reference is taken before the slot's old one is dropped, so rewriting a slot with its
 * own content never frees it. A rejected store leaves the slot as it was.
 *
 * Load: RAM (or a tier write buffer): decompress straight into the caller's buffer, check the
 * XXH3 of the result against the fingerprint (`checkLoads`): a corrupt object is ERR_DECOMPRESS,
 * never wrong data. Tier-only objects need a read: the async calls (startLoadBatch, loadAsync,
 * loadBatchAsync) never block the event loop; the synchronous ones (load, loadBatch) read with a
 * blocking pread — fine for a library caller, never used by the NBD server.
 *
 * Sync vs async: every public call exists in a synchronous form that always completes (it may
 * block on disk I/O when a tier is configured) and an async-capable form (`start*`) that returns
 * a plain value when it could finish in RAM — today's fast path, no Promise — and a Promise when
 * it must wait for the tier (a read, a write buffer, or reading a cold duplicate to confirm it).
 *
 * Dedup domains: by default each area dedups only within itself (sharing across tenants leaks
 * content through timing); `sharedDedup` makes one domain of all areas.
 *
 * Validation happens once at the public methods; private helpers trust their arguments.
 */
import { ZsPool, type CompactResult } from '../engine/alloc/zspool.js';
import { grow, growable } from '../engine/alloc/typed.js';
import { looksRandom, parseCodec, type Codec } from '../engine/codec/codec.js';
import { fillWord, isSameFilled, wordHi, wordLo } from '../engine/codec/same-filled.js';
import { Fingerprinter, type FingerprintFn, xxh3Fingerprint } from '../engine/dedup/fingerprint.js';
import { FingerprintIndex, KeyColumns } from '../engine/dedup/index.js';
import { ZdedupError, checkUint } from '../errors.js';
import { DiskTier, LOST_SEGMENT, type DiskTierOptions } from '../tiers/disk/disk-tier.js';
import { CODEC_LZ4, CODEC_RAW, CODEC_ZSTD, OBJECT_ENTRY, TAG_HOLE, TAG_OBJECT, TAG_SAME } from '../tiers/disk/format.js';
import { Durable, initialConfig, type DurableHost } from './durable/durable.js';
import type { RecoveryReport } from './durable/recovery.js';
import { NO_TIER_STATS, type AppendResult, type CleaningOwner, type Liveness, type Tier } from '../tiers/tier.js';
import { EphemeralTable } from './ephemeral.js';
import { ColdTier, NO_COLD_STATS, parseColdOptions, type ColdConfig } from './cold.js';
import { Maintenance, type MaintenanceEvents } from './maintenance.js';
import { IN_COLD, IN_RAM, IN_STAGE, IN_TIER, REFERENCED, ObjectTable, type ObjectId } from './objects.js';
import { CompressStage } from './stage.js';
import type { PageStoreStats } from './stats.js';

export type { PageStoreStats } from './stats.js';
export type { CompactResult } from '../engine/alloc/zspool.js';
export type { MaintenanceEvents } from './maintenance.js';

export type AreaId = number & { readonly __brand: 'AreaId' };
export type StoreResult = 'stored' | 'reject_pool_limit' | 'reject_alloc_fail' | 'reject_reclaim_fail' | 'reject_quota';
export type LoadResult = 'hit' | 'miss';
/** An ephemeral pool (createPool): a store area id that has no slot map. */
export type PoolId = number & { readonly __brand: 'PoolId' };
/** put(): 'stored', or 'rejected' — not cached (no room in RAM, or it would need the tier); any older page under the key is gone. */
export type PutResult = 'stored' | 'rejected';
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
  /** Upper bound of pool_total_size in bytes; 0 = unbounded. Default 0. Without a tier a store
   *  that needs more is refused (reject_pool_limit); with one, cold objects are written out. */
  maxPoolBytes?: number;
  /** With a tier: after the pool hit its limit, new objects bypass RAM until the writer brought
   *  the pool to this percentage of the limit (zswap's accept_threshold_percent). Default 90. */
  acceptThresholdPercent?: number;
  /** A disk tier to create (file or block device); see DiskTierOptions. */
  backing?: Omit<DiskTierOptions, 'pageSize' | 'events'>;
  /** Or a tier built by the caller (tests, future tiers). */
  tier?: Tier;
  /** Append every new object to the tier at store time too, so eviction costs no write. */
  writethrough?: boolean;
  /** Run writeback, cleaning and compaction in the background (unref'd timers). Default true
   *  when a tier is configured. Off: call maintenanceStep() yourself (tests do). */
  background?: boolean;
  /** Where background work reports (writeback episodes, tier errors). */
  events?: MaintenanceEvents;
  /** Replaces the fingerprint function (tests force collisions with it). */
  fingerprint?: FingerprintFn;
  /** The cold tier: idle objects recompressed in groups into RAM segments (see cold.ts). Off by default. */
  cold?: ColdConfig;
  /**
   * Durable mode (needs `backing`): every new object is appended to the disk tier at store time,
   * every slot change is journaled, sync() makes both durable, and a restart on the same backing
   * recovers the areas, their pages and the dedup index (src/core/durable). Areas are persisted.
   * `checkpointBytes`: journal bytes between checkpoints (default 64 MiB); `checkpointDataBytes`:
   * record bytes between them (default 1 GiB). `acceptLoss`, `scanAll`:
   * see recoverStore (fsck).
   */
  persist?: boolean | { checkpointBytes?: number; checkpointDataBytes?: number; acceptLoss?: boolean; scanAll?: boolean };
  /** Bytes per pool arena (default 1 MiB). Tests use small arenas (>= 16 pages) so a pool of a few
   *  zspages can be limited and writeback runs on almost every step. */
  arenaBytes?: number;
  /**
   * Worker threads that compress new pages while the store goes on (src/core/stage.ts); 0 (the
   * default here) compresses on the calling thread. Not used in durable mode (objects go to the
   * log compressed at store time). `stageSlots`: pages the stage holds at most (default 128).
   */
  compressThreads?: number;
  stageSlots?: number;
}

/** Metadata per page slot, written or not: the area's u32 slot-map cell. */
export const SLOT_METADATA_BYTES = 4;
/**
 * Metadata per stored object, for projections (zdedup analyze): refs 1 + length 2 + fingerprint
 * 8 + pool handle 4 = 15, plus the fingerprint index cell (4 B at load 0.64..0.8), zspage and
 * arena bookkeeping and the columns' growth step: 23 measured by `npm run bench` on its real-process
 * image (see bench/results/page-store-*.md), + 1 for the flags byte = 24 for a RAM-only store.
 * A store with a tier adds 16 B per object (tier location 8, LRU links 8): TIERED_OBJECT_METADATA_BYTES.
 */
export const OBJECT_METADATA_BYTES = 24;
export const TIERED_OBJECT_METADATA_BYTES = 40;

const SAME = 0x80000000;
const MAX_AREA_PAGES = 2 ** 31;
/** Tier reads in flight at most, store-wide (each holds a page buffer here and a read buffer in the tier). */
const TIER_READS_IN_FLIGHT = 32;
/** Pages the compression stage holds by default: 512 KiB of raw pages + 512 KiB of outputs at 4 KiB (512 slots wrote no faster on 2 cores and cost 3 MiB more RSS). */
const DEFAULT_STAGE_SLOTS = 128;
/** Second chances given per evictOldest() call at most (bounds one writeback step). */
const EVICT_MAX_ROTATIONS = 4096;

// storeOne's internal outcomes: the first four are final, the last two mean "wait, then retry".
const S_OK = 0, S_POOL_LIMIT = 1, S_ALLOC_FAIL = 2, S_RECLAIM_FAIL = 3, S_QUOTA = 4, S_WAIT_ROOM = 5, S_WAIT_VERIFY = 6;
const STORE_RESULTS: StoreResult[] = ['stored', 'reject_pool_limit', 'reject_alloc_fail', 'reject_reclaim_fail', 'reject_quota'];
/** Object bytes dropped per round at least when ephemeral pages make room for an allocation (reclaimEphemeral). */
const RECLAIM_ROUND_BYTES = 256 << 10;
/** LRU entries an over-quota store looks through for its own area's coldest objects. */
const QUOTA_SCAN = 1024;
// loadOne's outcomes
const L_HIT = 0, L_MISS = 1, L_NEED_READ = 2;

/** Same-filled words: a tiny refcounted table; word 0 is the zero word and is never freed. */
class WordTable {
  readonly keys = new KeyColumns();
  private refs = growable(Uint32Array); // grows in place, like the other columns: no copy pause with many words
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
  readonly writethrough: boolean;
  /** The tier cold objects go to, or null (RAM only). */
  readonly tier: Tier | null;
  /** Why the last store (or batch) was rejected, when it was. */
  lastReject: StoreResult = 'stored';

  private readonly pool: ZsPool;
  private readonly objects: ObjectTable;
  private readonly keys: KeyColumns;
  private readonly words = new WordTable();
  private readonly fp: Fingerprinter;
  private readonly scratch: Buffer; // compressed output / decompressed candidate
  private readonly tierScratch: Buffer; // a record's stored bytes read synchronously
  private readonly incompressibleCap: number;
  private readonly codecId: number;
  private readonly acceptBytes: number;
  private readonly maintenance: Maintenance;
  /** The cold tier, or null (off: no columns, no work). */
  private readonly cold: ColdTier | null;
  private readonly coldIds: Uint32Array;
  private readonly coldIdx: Uint8Array;
  /** zswap's "pool reached full": set when an allocation hits the limit, cleared below acceptBytes. */
  private poolFull = false;
  /** Sum of stored lengths of objects held in RAM. */
  private ramBytes = 0;
  private tierObjects = 0;
  /**
   * Answers of async reads of cold duplicate candidates for the store being retried (id -> the
   * location read and whether it matched). Set only around one synchronous storeOne call; one
   * small Map per store that had to read candidates, never per page.
   */
  private hints: Map<number, { w0: number; w1: number; same: number }> | null = null;
  /** The candidate storeOne needs read before it can decide (S_WAIT_VERIFY). */
  private verifyId = -1;
  private readBufs: Buffer[] = [];
  private tierReads = 0;
  private tierQueue: (() => void)[] = [];
  private closed = false;

  private slotMaps: (Uint32Array | undefined)[] = [];
  private domainIndex: FingerprintIndex[] = [];
  // per-area live counts (one number per area, not per page)
  private areaStored: number[] = [];
  private areaSame: number[] = [];
  private areaZero: number[] = [];
  // Per area: which 4 KiB blocks of its slot map were ever written (1 bit per 1024 slots) and how
  // many, so metadata_bytes counts the slot map memory really used, not the whole reservation
  // (an empty 8 TiB export reserves 8 GiB of slot map that the kernel never backs).
  private touched: Uint32Array[] = [];
  private touchedBlocks: number[] = [];
  // per-area pool quotas (0 = none) and bytes of RAM objects each area created
  private areaQuota: number[] = [];
  private areaRam: number[] = [];
  /** A refusal episode is under way (logged once when it starts, once when stores are taken again). */
  private refusing = false;
  private readonly events: MaintenanceEvents;
  private names: string[] = [];
  private byName = new Map<string, number>();
  /** Ephemeral pools (see ephemeral.ts): created with the first pool, so a store without one pays nothing. */
  private eph: EphemeralTable | null = null;
  private poolByName = new Map<string, number>();
  /** Per area id: true when it is an ephemeral pool. */
  private isPool: boolean[] = [];
  /** Ephemeral entries that hold an object (not a same-filled word): they count in duplicate_pages. */
  private ephObjRefs = 0;
  /** Set while an ephemeral put places a new object: RAM only, never the tier, never writethrough. */
  private ramOnly = false;
  private readonly ephCollect = new Uint32Array(4096);
  private areaMetas: (string | undefined)[] = [];
  /** Durable mode (null when off: every hook below is one null check). */
  private readonly durable: Durable | null = null;
  /** The journal of durable mode, or null. */
  private readonly jnl: Durable['journal'] | null = null;
  /** The compression stage (worker threads), or null: new pages are compressed inline. */
  private readonly stage: CompressStage | null = null;
  private readonly installStaged = (id: number, area: number, len: number, bytes: Uint8Array): boolean => this.install(id, area, len, bytes);

  private c = {
    stored_pages: 0, same_filled_pages: 0, zero_pages: 0, unique_objects: 0,
    stored_incompressible_pages: 0, compressed_bytes: 0, reject_alloc_fail: 0, pool_limit_hit: 0,
    decompress_fail: 0, store_calls: 0, load_calls: 0, load_hits: 0, load_misses: 0,
    invalidated_pages: 0, dedup_hits: 0, verify_mismatch: 0,
    reject_reclaim_fail: 0, written_back_pages: 0, evicted_clean_pages: 0, pool_bypass_pages: 0,
    writethrough_pages: 0, promoted_pages: 0, disk_loads: 0, store_waits: 0, quota_limit_hit: 0,
    ephemeral_puts: 0, ephemeral_put_rejected: 0, ephemeral_hits: 0, ephemeral_misses: 0,
    ephemeral_evicted_pages: 0, ephemeral_flushed_pages: 0,
  };

  constructor(opts: PageStoreOptions = {}) {
    const ps = opts.pageSize ?? 4096;
    if (!Number.isSafeInteger(ps) || ps < 4096 || ps > 65536 || (ps & (ps - 1)) !== 0) {
      throw new ZdedupError('ERR_INVALID_ARGUMENT', `page size must be a power of two from 4096 to 65536, got ${String(ps)}`);
    }
    if (opts.maxPoolBytes !== undefined) checkUint('maxPoolBytes', opts.maxPoolBytes);
    const accept = opts.acceptThresholdPercent ?? 90;
    if (typeof accept !== 'number' || !(accept > 0 && accept <= 100)) {
      throw new ZdedupError('ERR_INVALID_ARGUMENT', `accept threshold must be a percentage in (0, 100], got ${String(accept)}`);
    }
    this.pageSize = ps;
    this.codec = parseCodec(opts.codec ?? 'lz4');
    this.codecId = this.codec.name === 'lz4' ? CODEC_LZ4 : this.codec.name === 'zstd' ? CODEC_ZSTD : CODEC_RAW;
    this.verify = opts.verify ?? true;
    this.checkLoads = opts.checkLoads ?? true;
    this.sharedDedup = opts.sharedDedup ?? false;
    this.writethrough = opts.writethrough ?? false;
    this.fp = new Fingerprinter(opts.fingerprint ?? xxh3Fingerprint());
    this.pool = new ZsPool(ps, opts.maxPoolBytes ?? 0, opts.arenaBytes !== undefined ? Math.floor(opts.arenaBytes / ps) : undefined);
    this.acceptBytes = Math.floor((this.pool.maxBytes * accept) / 100);
    const coldOpts = opts.cold !== undefined ? parseColdOptions(opts.cold) : null;
    // The cold pass finds idle objects by their stamps, not by the LRU list: only a disk tier needs the list.
    this.objects = new ObjectTable(ps, (cap) => { this.pool.ensureIds(cap); this.cold?.ensureIds(cap); },
      opts.tier !== undefined || opts.backing !== undefined);
    this.keys = this.objects.keys;
    this.scratch = Buffer.alloc(ps * 2);
    this.tierScratch = Buffer.alloc(ps);
    this.incompressibleCap = ps - ps / 8;
    if (this.sharedDedup) this.domainIndex.push(new FingerprintIndex(this.keys));
    const events = opts.events ?? (() => {});
    this.events = events;
    if (opts.tier !== undefined && opts.backing !== undefined) throw new ZdedupError('ERR_INVALID_ARGUMENT', 'give either tier or backing, not both');
    const persist = opts.persist !== undefined && opts.persist !== false;
    if (persist && opts.backing === undefined) throw new ZdedupError('ERR_INVALID_ARGUMENT', 'durable mode (persist) needs a backing file or device');
    if (persist && opts.cold !== undefined) throw new ZdedupError('ERR_INVALID_ARGUMENT', 'durable mode (persist) and the cold tier do not go together yet: cold groups are not in the log');
    this.tier = opts.tier ?? (opts.backing !== undefined ? new DiskTier({
      ...opts.backing, pageSize: ps, events, ...(persist ? { persist: { config: initialConfig(ps, this.codec.spec, this.sharedDedup) } } : {}),
    }) : null);
    if (this.writethrough && this.tier === null) throw new ZdedupError('ERR_INVALID_ARGUMENT', 'writethrough needs a tier (a backing file or device)');
    this.cold = coldOpts !== null ? new ColdTier(coldOpts, ps, this.objects, this.pool, this.codec, { dropRam: (id, len) => this.dropRam(id, len) }) : null;
    this.coldIds = new Uint32Array(coldOpts?.groupPages ?? 0);
    this.coldIdx = new Uint8Array(coldOpts?.groupPages ?? 0);
    if (persist) {
      this.objects.enableSerials();
      try {
        this.durable = new Durable(this.tier as DiskTier, this.durableHost(), ps, this.codec.spec, this.sharedDedup, {
          ...(typeof opts.persist === 'object' ? opts.persist : {}), events,
        });
      } catch (e) {
        void this.tier!.close();
        throw e;
      }
      this.jnl = this.durable.journal;
      const tier = this.tier as DiskTier;
      tier.serialOf = (id) => this.objects.serialOf(id);
      this.cleaningOwner.resolve = (id, w0, w1, lo, hi) => this.objectAt(id, w0, w1, lo, hi);
    }
    const threads = opts.compressThreads ?? 0;
    if (!Number.isSafeInteger(threads) || threads < 0 || threads > 64) throw new ZdedupError('ERR_INVALID_ARGUMENT', `compress threads must be 0..64, got ${String(threads)}`);
    if (threads > 0 && this.durable === null && this.codec.name !== 'none') {
      this.stage = new CompressStage({ slots: opts.stageSlots ?? DEFAULT_STAGE_SLOTS, pageSize: ps, threads, codec: this.codec, cap: this.incompressibleCap });
      this.stage.onDone = () => { if (!this.closed) this.stage!.drain(this.installStaged); };
      this.stage.onWorkerError = (w, e) => events('error', 'compression worker failed: its pages are compressed on the main thread', { worker: w, error: e.message });
    }
    this.maintenance = new Maintenance(this, this.tier, events, opts.background ?? (this.tier !== null || this.cold !== null));
  }

  // ---------------------------------------------------------------------------------------------
  // Areas

  /**
   * Defines an area of `pages` slots (4 bytes of metadata each until written). `maxPoolBytes`:
   * the most RAM pool bytes (stored lengths) the objects this area creates may hold. Beyond it, a
   * store writes back the area's own coldest objects to the tier (or sends the new one there),
   * or is refused with 'reject_quota' without a tier; other areas' objects are never pushed out
   * for it. Quotas must be set before the store holds objects (their owner is then recorded:
   * 2 B per object, only once some area has a quota). With sharedDedup an object counts for the
   * area that created it.
   */
  createArea(name: string, pages: number, opts: { maxPoolBytes?: number; meta?: string } = {}): AreaId {
    if (typeof name !== 'string') throw new ZdedupError('ERR_INVALID_ARGUMENT', 'area name must be a string');
    checkUint('pages', pages);
    if (pages < 1 || pages > MAX_AREA_PAGES) {
      throw new ZdedupError('ERR_INVALID_ARGUMENT', `area size must be 1..${MAX_AREA_PAGES} pages, got ${pages}`);
    }
    if (this.byName.has(name)) throw new ZdedupError('ERR_AREA_EXISTS', `area "${name}" already exists`);
    const quota = opts.maxPoolBytes ?? 0;
    checkUint('maxPoolBytes', quota);
    const id = this.slotMaps.length;
    if (quota > 0) {
      if (this.objects.owner === null && this.objects.idLimit > 0) {
        throw new ZdedupError('ERR_INVALID_ARGUMENT', 'per-area pool quotas must be set before the store holds objects');
      }
      this.objects.enableOwners();
    }
    if (this.objects.owner !== null && id > 0xffff) throw new ZdedupError('ERR_INVALID_ARGUMENT', 'with per-area pool quotas a store has at most 65536 areas');
    this.addAreaId(name, new Uint32Array(pages), quota);
    this.byName.set(name, id);
    this.areaMetas[id] = opts.meta;
    this.durable?.defineArea(name, pages, opts.meta);
    return id as AreaId;
  }

  /** Appends an area id's per-area state; an ephemeral pool has no slot map (slotMaps[id] undefined). */
  private addAreaId(name: string, slots: Uint32Array | undefined, quota: number): number {
    const id = this.slotMaps.length;
    this.slotMaps.push(slots);
    this.areaStored.push(0); this.areaSame.push(0); this.areaZero.push(0);
    this.areaQuota.push(quota); this.areaRam.push(0);
    this.touched.push(new Uint32Array(Math.ceil((slots?.length ?? 0) / 1024 / 32)));
    this.touchedBlocks.push(0);
    this.names.push(name);
    this.isPool.push(slots === undefined);
    if (!this.sharedDedup) this.domainIndex.push(new FingerprintIndex(this.keys));
    return id;
  }

  // ---------------------------------------------------------------------------------------------
  // Ephemeral pools (tmem's cleancache half; the table is ephemeral.ts)
  //
  // A pool's pages are clean copies whose truth lives elsewhere: a get returns the last page put
  // under the key or misses, never other data, and any page may vanish at any time. They share
  // dedup and compression with everything in their dedup domain (the pool alone, or every area
  // with sharedDedup), live only in RAM (never written to the tier), and are the first thing
  // dropped under pressure: coldest first, before any persistent object is written back or
  // refused (reclaimEphemeral, dropEphemeral).

  /** Creates an ephemeral pool (its own dedup domain unless sharedDedup). Only `ephemeral: true` exists. */
  createPool(name: string, opts: { ephemeral: true }): PoolId {
    if (typeof name !== 'string') throw new ZdedupError('ERR_INVALID_ARGUMENT', 'pool name must be a string');
    if (opts?.ephemeral !== true) throw new ZdedupError('ERR_INVALID_ARGUMENT', 'createPool makes ephemeral pools ({ ephemeral: true }); persistent pages live in areas (createArea)');
    if (this.poolByName.has(name)) throw new ZdedupError('ERR_AREA_EXISTS', `pool "${name}" already exists`);
    if (this.objects.owner !== null && this.slotMaps.length > 0xffff) throw new ZdedupError('ERR_INVALID_ARGUMENT', 'with per-area pool quotas a store has at most 65536 areas and pools');
    this.eph ??= new EphemeralTable();
    const id = this.addAreaId(`pool:${name}`, undefined, 0);
    this.poolByName.set(name, id);
    return id as PoolId;
  }

  /** The pool named `name`; ERR_UNKNOWN_AREA if none. */
  poolNamed(name: string): PoolId {
    const id = this.poolByName.get(name);
    if (id === undefined) throw new ZdedupError('ERR_UNKNOWN_AREA', `no pool named "${name}"`);
    return id as PoolId;
  }

  /**
   * Caches `page` under (key, index) in ephemeral pool `pool`, replacing what was there. Never
   * blocks and never waits: when the page cannot be placed in RAM at once (no room even after
   * dropping colder ephemeral pages, or confirming a duplicate would need a tier read) it is not
   * cached ('rejected') and any older page under the key is dropped, so a get then misses.
   * `key`: a non-negative safe integer or a bigint below 2^64; `index`: 0..2^32-1.
   */
  put(pool: PoolId, key: number | bigint, index: number, page: Uint8Array): PutResult {
    this.checkPool(pool);
    const khi = keyHi(key), klo = keyLo(key);
    this.checkPoolIndex(index);
    this.checkPage(page, this.pageSize);
    const t = this.eph!;
    this.c.ephemeral_puts++;
    this.ramOnly = true;
    let v: number;
    try {
      v = this.acquire(pool, page, false, 0);
    } finally {
      this.ramOnly = false;
    }
    // Looked up after acquire: making room may have dropped this very entry.
    const e = t.find(pool, khi, klo, index);
    if (v < 0) {
      this.c.ephemeral_put_rejected++;
      if (e >= 0) this.ephRelease(pool, t.remove(e));
      return 'rejected';
    }
    if ((v & SAME) === 0) this.ephObjRefs++;
    if (e < 0) { t.add(pool, khi, klo, index, v); return 'stored'; }
    const old = t.value(e);
    t.setValue(e, v);
    this.ephRelease(pool, old);
    return 'stored';
  }

  /**
   * Copies the page cached under (key, index) into `into` at byte `at` (default 0; into needs
   * at + pageSize bytes): 'hit', or 'miss' with `into` untouched. Never blocks: a page whose object has gone to the tier (shared with a
   * persistent slot) or fails its checks is dropped and misses — the truth lives elsewhere.
   */
  get(pool: PoolId, key: number | bigint, index: number, into: Uint8Array, at = 0): LoadResult {
    this.checkPool(pool);
    const khi = keyHi(key), klo = keyLo(key);
    this.checkPoolIndex(index);
    checkUint('at', at);
    this.checkInto(into, at + this.pageSize);
    const t = this.eph!;
    const c = this.c;
    const e = t.find(pool, khi, klo, index);
    if (e < 0) { c.ephemeral_misses++; return 'miss'; }
    const calls = c.load_calls, hits = c.load_hits; // loadOne counts slot loads; this is not one
    let r = L_MISS;
    try {
      r = this.loadOne(t.value(e), into, at, false);
    } catch (err) {
      if (!(err instanceof ZdedupError) || err.code !== 'ERR_DECOMPRESS') throw err;
      // counted in decompress_fail; not data: dropped, and the caller reads the truth
    } finally {
      c.load_calls = calls; c.load_hits = hits;
    }
    if (r === L_HIT) { t.touch(e); c.ephemeral_hits++; return 'hit'; }
    this.ephRelease(pool, t.remove(e));
    c.ephemeral_flushed_pages++;
    c.ephemeral_misses++;
    return 'miss';
  }

  /** What is cached under (key, index), without using it: 0 nothing, 1 the zero page, 2 other data. */
  peek(pool: PoolId, key: number | bigint, index: number): PageKind {
    this.checkPool(pool);
    const khi = keyHi(key), klo = keyLo(key);
    this.checkPoolIndex(index);
    const t = this.eph!;
    const e = t.find(pool, khi, klo, index);
    if (e < 0) return 0;
    return t.value(e) === SAME ? 1 : 2;
  }

  /** Drops the page cached under (key, index), if any. */
  flush(pool: PoolId, key: number | bigint, index: number): void {
    this.checkPool(pool);
    const khi = keyHi(key), klo = keyLo(key);
    this.checkPoolIndex(index);
    const t = this.eph!;
    const e = t.find(pool, khi, klo, index);
    if (e < 0) return;
    this.ephRelease(pool, t.remove(e));
    this.c.ephemeral_flushed_pages++;
  }

  /** Drops every page cached under `key` (cleancache invalidate_inode). Walks the whole table. */
  flushObject(pool: PoolId, key: number | bigint): void {
    this.checkPool(pool);
    this.flushWhere(pool, keyHi(key), keyLo(key), false);
  }

  /** Drops every page of the pool (the pool stays defined). Walks the whole table. */
  flushPool(pool: PoolId): void {
    this.checkPool(pool);
    this.flushWhere(pool, 0, 0, true);
  }

  private flushWhere(pool: number, khi: number, klo: number, wholePool: boolean): void {
    const t = this.eph!;
    const out = this.ephCollect;
    for (;;) {
      const n = t.collect(pool, khi, klo, wholePool, out);
      for (let i = 0; i < n; i++) this.ephRelease(pool, t.remove(out[i]!));
      this.c.ephemeral_flushed_pages += n;
      if (n < out.length) return;
    }
  }

  /** Drops an ephemeral entry's reference; returns the RAM bytes that freed. */
  private ephRelease(pool: number, v: number): number {
    if ((v & SAME) === 0) this.ephObjRefs--;
    return this.dropRef(pool, v);
  }

  /** Ephemeral pages held (maintenance drops them before writing anything back). */
  ephemeralPages(): number {
    return this.eph?.count ?? 0;
  }

  /**
   * Drops the coldest ephemeral pages until `budgetBytes` of RAM are freed, `maxPages` pages are
   * dropped, or none is left; returns the RAM bytes freed. Only what actually frees memory
   * counts: a page sharing its object with a persistent slot (or another entry) frees nothing.
   */
  dropEphemeral(budgetBytes: number, maxPages = 4096): number {
    const t = this.eph;
    if (t === null) return 0;
    let freed = 0;
    for (let n = 0; n < maxPages && freed < budgetBytes; n++) {
      const e = t.coldest();
      if (e < 0) break;
      const pool = t.poolOf(e);
      freed += this.ephRelease(pool, t.remove(e));
      this.c.ephemeral_evicted_pages++;
    }
    return freed;
  }

  /**
   * The pool is at its limit and ephemeral pages exist: make room from them before anything
   * persistent is written back or refused. As zswap's hysteresis, one reclaim makes room for
   * many allocations: drop the coldest until the objects in RAM fit 95% of the accept threshold,
   * then compact, since freed slots only lower pool_total_size once whole arenas empty. When the
   * allocation still fails (the pool is full of sparse zspages of other size classes), drop
   * further rounds of at least RECLAIM_ROUND_BYTES until it succeeds or no ephemeral page is
   * left. Runs once per crossing of the limit, not per store.
   */
  private reclaimEphemeral(id: number, len: number): 'ok' | 'pool_limit' | 'zspage_limit' {
    const target = this.acceptBytes * 0.95;
    let a: 'ok' | 'pool_limit' | 'zspage_limit' = 'pool_limit';
    while (a === 'pool_limit' && this.eph!.count > 0) {
      this.dropEphemeral(Math.max(this.ramBytes + len - target, RECLAIM_ROUND_BYTES));
      for (let i = 0; i < 64 && this.pool.totalSize() + this.pageSize > this.acceptBytes; i++) {
        const r = this.pool.compact();
        if (r.moved_objects === 0 && r.moved_zspages === 0 && r.freed_arenas === 0) break;
      }
      a = this.pool.alloc(id, len);
    }
    return a;
  }

  /** True when an area named `name` exists (in durable mode: possibly recovered from the backing). */
  hasArea(name: string): boolean {
    return this.byName.has(name);
  }

  /** What the caller stored with the area (createArea's `meta`; persisted in durable mode). */
  areaMeta(area: AreaId): string | undefined {
    this.slotsOf(area);
    return this.areaMetas[area];
  }

  /** Grows an area to `pages` slots (never shrinks), and sets its meta; persisted in durable mode. */
  growArea(area: AreaId, pages: number, meta?: string): void {
    const old = this.slotsOf(area);
    checkUint('pages', pages);
    if (pages < old.length || pages > MAX_AREA_PAGES) throw new ZdedupError('ERR_INVALID_ARGUMENT', `area "${this.names[area]}" can grow from ${old.length} pages up to ${MAX_AREA_PAGES}, not to ${pages}`);
    if (pages > old.length) {
      const m = new Uint32Array(pages);
      m.set(old);
      this.slotMaps[area] = m;
      const t = new Uint32Array(Math.ceil(pages / 1024 / 32));
      t.set(this.touched[area]!);
      this.touched[area] = t;
    }
    this.areaMetas[area] = meta;
    this.durable?.defineArea(this.names[area]!, pages, meta);
  }

  /** True in durable mode (sync() makes writes survive a crash). */
  get persistent(): boolean {
    return this.durable !== null;
  }

  /**
   * Durable mode: resolves once every store, zero and invalidation made before the call survives
   * a crash (journal drained into the log, then one fdatasync shared by concurrent callers).
   * Without durable mode there is nothing to make durable: resolves at once.
   */
  sync(): Promise<void> {
    if (this.jnl === null) return Promise.resolve();
    return this.jnl.flush();
  }

  /** What recovery found at start (durable mode on an existing backing), else null. */
  recoveryReport(): RecoveryReport | null {
    return this.durable?.report ?? null;
  }

  /** Durable mode: writes a checkpoint now (tests; it also runs every `checkpointBytes` of journal). */
  checkpointNow(): void {
    this.jnl?.checkpoint();
  }

  /** The glue durable mode uses to read and rebuild slots (built once, in the constructor). */
  private durableHost(): DurableHost {
    const o = this.objects;
    return {
      encodeSlot: (area, slot, dst, at) => {
        const v = this.slotMaps[area]![slot]!;
        if (v === 0) { dst.writeUInt32LE(TAG_HOLE, at); dst.writeUInt32LE(0, at + 4); dst.writeUInt32LE(0, at + 8); return; }
        if (v & SAME) {
          const w = v & ~SAME;
          dst.writeUInt32LE(TAG_SAME, at); dst.writeUInt32LE(this.words.keys.lo[w]!, at + 4); dst.writeUInt32LE(this.words.keys.hi[w]!, at + 8);
          return;
        }
        dst.writeUInt32LE(TAG_OBJECT, at); dst.writeUInt32LE(o.serialLo![v - 1]!, at + 4); dst.writeUInt32LE(o.serialHi![v - 1]!, at + 8);
      },
      areaCount: () => this.slotMaps.length,
      areaPages: (a) => this.slotMaps[a]?.length ?? 0,
      isHole: (a, slot) => this.slotMaps[a]![slot] === 0,
      encodeObjects: () => {
        const out = Buffer.allocUnsafe(this.c.unique_objects * OBJECT_ENTRY);
        let at = 0;
        for (let id = 0; id < o.idLimit && at < out.length; id++) {
          if (!o.isLive(id) || (o.flags[id]! & IN_TIER) === 0) continue; // (RAM-only: ephemeral pages)
          out.writeUInt32LE(o.serialLo![id]!, at); out.writeUInt32LE(o.serialHi![id]!, at + 4);
          out.writeUInt32LE(o.w0[id]!, at + 8); out.writeUInt32LE(o.w1[id]!, at + 12); out.writeUInt32LE(o.lens[id]!, at + 16);
          out.writeUInt32LE(o.keys.lo[id]!, at + 20); out.writeUInt32LE(o.keys.hi[id]!, at + 24);
          at += OBJECT_ENTRY;
        }
        return out.subarray(0, at);
      },
      defineArea: (a) => { this.createArea(a.name, a.pages, { meta: a.meta }); },
      setSame: (area, slot, lo, hi) => {
        const w = this.words.acquire(lo, hi);
        this.slotMaps[area]![slot] = SAME | w;
        this.touch(area, slot);
        this.count(area, 0, 1);
        this.c.same_filled_pages++;
        this.areaSame[area]!++;
        if (w === 0) { this.c.zero_pages++; this.areaZero[area]!++; }
      },
      newObject: (area, serial, seg, off, len, fpLo, fpHi, lost) => {
        const id = o.newId();
        o.setSerial(id, serial);
        o.lens[id] = lost ? this.pageSize : len;
        // A lost object gets a fingerprint no page has in practice, and a location every read refuses.
        o.keys.lo[id] = lost ? serial >>> 0 : fpLo;
        o.keys.hi[id] = lost ? 0x10570b1e : fpHi;
        o.refs[id] = 0;
        o.flags[id] = IN_TIER;
        o.w0[id] = lost ? LOST_SEGMENT : seg;
        o.w1[id] = off;
        if (o.owner !== null) o.owner[id] = area;
        this.domainIndex[this.sharedDedup ? 0 : area]!.insert(id);
        this.tierObjects++;
        this.c.unique_objects++;
        this.c.compressed_bytes += o.lens[id]!;
        if (o.lens[id] === this.pageSize) this.c.stored_incompressible_pages++;
        return id;
      },
      setObject: (area, slot, id) => {
        o.incRef(id);
        this.slotMaps[area]![slot] = id + 1;
        this.touch(area, slot);
        this.count(area, 0, 1);
      },
    };
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
  // Public API: store

  /** Stores one page at slot `offset`. On a reject the slot keeps its previous content. May block on the tier. */
  store(area: AreaId, offset: number, page: Uint8Array): StoreResult {
    const slots = this.slotsOf(area);
    this.checkIndex(offset, 1, slots.length);
    this.checkPage(page, this.pageSize);
    this.c.store_calls++;
    this.lastReject = 'stored';
    return STORE_RESULTS[this.storeSync(area, slots, offset, page, 0)]!;
  }

  /** Stores pages.length / pageSize consecutive pages; returns how many were stored (stops at the first reject). May block on the tier. */
  storeBatch(area: AreaId, offset: number, pages: Uint8Array): number {
    const slots = this.slotsOf(area);
    const n = this.checkBatch(pages);
    this.checkIndex(offset, n, slots.length);
    const P = this.pageSize;
    this.lastReject = 'stored';
    for (let i = 0; i < n; i++) {
      this.c.store_calls++;
      if (this.storeSync(area, slots, offset + i, pages, i * P) !== S_OK) return i;
    }
    return n;
  }

  /**
   * storeBatch for event-loop servers: returns the number stored when every page could be placed
   * at once (the fast path: no Promise), else a Promise of it — when the tier's write buffers are
   * full, or a duplicate candidate lives only in the tier and must be read to be confirmed. Never
   * blocks. `pages` must stay untouched until the Promise settles — or pass `copyOnWait` and the
   * store keeps a copy of the pages it has yet to store when it must wait.
   */
  startStoreBatch(area: AreaId, offset: number, pages: Uint8Array, copyOnWait = false, why?: { r: StoreResult }): number | Promise<number> {
    const slots = this.slotsOf(area);
    const n = this.checkBatch(pages);
    this.checkIndex(offset, n, slots.length);
    const P = this.pageSize;
    this.lastReject = 'stored';
    for (let i = 0; i < n; i++) {
      this.c.store_calls++;
      const r = this.storeOne(area, slots, offset + i, pages, i * P, false);
      if (r === S_OK) continue;
      if (r >= S_WAIT_ROOM) {
        if (!copyOnWait) return this.storeRest(area, offset, pages, i, n, r, why);
        const rest = Uint8Array.prototype.slice.call(pages, i * P) as Uint8Array; // one copy per wait, not per page stored
        return this.storeRest(area, offset + i, rest, 0, n - i, r, why).then((k) => i + k);
      }
      if (why) why.r = STORE_RESULTS[r]!;
      return i;
    }
    return n;
  }

  /** store() that never blocks the event loop. */
  async storeAsync(area: AreaId, offset: number, page: Uint8Array): Promise<StoreResult> {
    this.checkPage(page, this.pageSize);
    const why = { r: 'stored' as StoreResult };
    const n = await this.startStoreBatch(area, offset, page, false, why);
    return n === 1 ? 'stored' : why.r;
  }

  /** storeBatch() that never blocks the event loop. */
  async storeBatchAsync(area: AreaId, offset: number, pages: Uint8Array): Promise<number> {
    return this.startStoreBatch(area, offset, pages);
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
      this.touch(area, i);
      this.count(area, old, 1);
      c.same_filled_pages++; c.zero_pages++;
      this.areaSame[area]!++; this.areaZero[area]!++;
      if (this.jnl !== null) this.jnl.note(area, i);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Public API: load

  /** Loads slot `offset` into `into` (>= pageSize bytes). On a miss `into` is left untouched. May block on the tier. */
  load(area: AreaId, offset: number, into: Uint8Array): LoadResult {
    const slots = this.slotsOf(area);
    this.checkIndex(offset, 1, slots.length);
    this.checkInto(into, this.pageSize);
    return this.loadOne(slots[offset]!, into, 0, true) === L_HIT ? 'hit' : 'miss';
  }

  /** Loads `count` consecutive slots into `into`; misses are zero-filled. Returns the number of hits. May block on the tier. */
  loadBatch(area: AreaId, offset: number, count: number, into: Uint8Array): number {
    const slots = this.slotsOf(area);
    this.checkIndex(offset, count, slots.length);
    const P = this.pageSize;
    this.checkInto(into, count * P);
    let hits = 0;
    for (let i = 0; i < count; i++) {
      if (this.loadOne(slots[offset + i]!, into, i * P, true) === L_HIT) hits++;
      else into.fill(0, i * P, (i + 1) * P);
    }
    return hits;
  }

  /**
   * loadBatch for event-loop servers: returns the hits when every page was in RAM (the fast path:
   * no Promise), else a Promise that resolves once the tier reads are done and `into` is complete.
   * The result is the content at the time of the call, even if the slots change meanwhile.
   * Rejects with ERR_DECOMPRESS / ERR_DISK_READ; bytes of a failed load are not data.
   */
  startLoadBatch(area: AreaId, offset: number, count: number, into: Uint8Array): number | Promise<number> {
    const slots = this.slotsOf(area);
    this.checkIndex(offset, count, slots.length);
    const P = this.pageSize;
    this.checkInto(into, count * P);
    let hits = 0;
    let reads: Promise<void>[] | null = null;
    for (let i = 0; i < count; i++) {
      const v = slots[offset + i]!;
      const r = this.loadOne(v, into, i * P, false);
      if (r === L_HIT) hits++;
      else if (r === L_MISS) into.fill(0, i * P, (i + 1) * P);
      else (reads ??= []).push(this.readObject(v - 1, into, i * P)); // one entry per page read from the tier
    }
    if (reads === null) return hits;
    const n = hits + reads.length;
    return Promise.all(reads).then(() => n);
  }

  /** load() that never blocks the event loop. */
  async loadAsync(area: AreaId, offset: number, into: Uint8Array): Promise<LoadResult> {
    const slots = this.slotsOf(area);
    this.checkIndex(offset, 1, slots.length);
    this.checkInto(into, this.pageSize);
    if (slots[offset] === 0) { this.c.load_calls++; this.c.load_misses++; return 'miss'; }
    await this.startLoadBatch(area, offset, 1, into);
    return 'hit';
  }

  /** loadBatch() that never blocks the event loop. */
  async loadBatchAsync(area: AreaId, offset: number, count: number, into: Uint8Array): Promise<number> {
    return this.startLoadBatch(area, offset, count, into);
  }

  /** True when loading slot `offset` needs a tier read (the object is not in RAM or a write buffer). */
  needsTierRead(area: AreaId, offset: number): boolean {
    const slots = this.slotsOf(area);
    this.checkIndex(offset, 1, slots.length);
    const v = slots[offset]!;
    if (v === 0 || (v & SAME) !== 0) return false;
    const id = v - 1;
    if ((this.objects.flags[id]! & (IN_RAM | IN_COLD | IN_STAGE)) !== 0) return false;
    return !this.tier!.locateBuffered(this.objects.w0[id]!, this.objects.w1[id]!);
  }

  // ---------------------------------------------------------------------------------------------
  // Public API: invalidate, inspect

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

  /** Live counts of one area: stored (same-filled included), same-filled, zero, and never-written/invalidated pages. */
  areaStats(area: AreaId): { pages: number; stored_pages: number; same_filled_pages: number; zero_pages: number; hole_pages: number; pool_bytes: number | null; max_pool_bytes: number } {
    const slots = this.slotsOf(area);
    const stored = this.areaStored[area]!;
    return {
      pages: slots.length, stored_pages: stored, same_filled_pages: this.areaSame[area]!, zero_pages: this.areaZero[area]!, hole_pages: slots.length - stored,
      // RAM bytes of the objects the area created: known only while owners are recorded (quotas)
      pool_bytes: this.objects.owner !== null ? this.areaRam[area]! : null,
      max_pool_bytes: this.areaQuota[area]!,
    };
  }

  // ---------------------------------------------------------------------------------------------
  // Maintenance (policy in maintenance.ts)

  /** One bounded compaction step (at most `budget` objects moved); repeat while it moves something. */
  compact(budget?: number): CompactResult {
    return this.pool.compact(budget);
  }

  /**
   * Compaction policy: compacts when the pool holds more than `minWasteBytes` (default 8 MiB)
   * and more than `maxWasteFraction` (default 1/8) of its size beyond the bytes of the objects it
   * holds. Returns the result, or null when no compaction was needed. One bounded step.
   */
  maybeCompact(minWasteBytes = 8 << 20, maxWasteFraction = 1 / 8, budget?: number): CompactResult | null {
    const pool = this.pool.totalSize();
    const waste = pool - this.ramBytes;
    if (waste < minWasteBytes || waste < pool * maxWasteFraction) return null;
    return this.pool.compact(budget);
  }

  /** Runs background work until there is none left (tests; with background: false). */
  async settle(): Promise<void> {
    await this.maintenance.settle();
  }

  /** Starts or stops the background work (timers are unref'd: they never keep a process alive). */
  setBackground(on: boolean): void {
    this.maintenance.setBackground(on);
  }

  /** Stops background work and closes the tier (waits for writes under way). */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.jnl !== null) {
      try {
        await this.jnl.close(); // a clean stop keeps everything, flushed or not, with a checkpoint for a quick start
      } catch (e) {
        this.events('error', 'final flush failed: writes since the last FLUSH may be lost', { cause: e });
      }
    }
    this.closed = true;
    await this.maintenance.stop();
    await this.stage?.close();
    await this.tier?.close();
  }

  stats(): PageStoreStats {
    if (this.stage !== null && !this.closed) this.stage.drain(this.installStaged);
    const c = this.c;
    const P = this.pageSize;
    const pool = this.pool.totalSize();
    const meta = this.metadataBytes();
    const dedupSlots = c.stored_pages - c.same_filled_pages + this.ephObjRefs;
    const t = this.tier?.stats() ?? NO_TIER_STATS;
    return {
      page_size: P,
      stored_pages: c.stored_pages,
      same_filled_pages: c.same_filled_pages,
      zero_pages: c.zero_pages,
      duplicate_pages: dedupSlots - c.unique_objects,
      unique_objects: c.unique_objects,
      stored_incompressible_pages: c.stored_incompressible_pages,
      pool_total_size: pool,
      max_pool_bytes: this.pool.maxBytes,
      logical_bytes: c.stored_pages * P,
      compressed_bytes: c.compressed_bytes,
      ram_objects: this.objects.lruCount,
      ram_compressed_bytes: this.ramBytes,
      metadata_bytes: meta,
      slot_map_reserved_bytes: this.slotMapReservedBytes(),
      compression_ratio: c.compressed_bytes > 0 ? (c.unique_objects * P) / c.compressed_bytes : 1,
      dedup_ratio: c.unique_objects > 0 ? dedupSlots / c.unique_objects : 1,
      effective_ratio: (c.stored_pages * P) / (pool + (this.cold?.bytes() ?? 0) + (this.stage?.bytes() ?? 0) + meta),
      stage_pages: this.stage?.staged ?? 0,
      stage_bytes: this.stage?.bytes() ?? 0,
      reject_alloc_fail: c.reject_alloc_fail,
      pool_limit_hit: c.pool_limit_hit,
      reject_reclaim_fail: c.reject_reclaim_fail,
      decompress_fail: c.decompress_fail,
      written_back_pages: c.written_back_pages,
      evicted_clean_pages: c.evicted_clean_pages,
      pool_bypass_pages: c.pool_bypass_pages,
      writethrough_pages: c.writethrough_pages,
      promoted_pages: c.promoted_pages,
      disk_loads: c.disk_loads,
      store_waits: c.store_waits,
      quota_limit_hit: c.quota_limit_hit,
      ephemeral_pages: this.eph?.count ?? 0,
      ephemeral_puts: c.ephemeral_puts,
      ephemeral_put_rejected: c.ephemeral_put_rejected,
      ephemeral_hits: c.ephemeral_hits,
      ephemeral_misses: c.ephemeral_misses,
      ephemeral_evicted_pages: c.ephemeral_evicted_pages,
      ephemeral_flushed_pages: c.ephemeral_flushed_pages,
      disk_objects: this.tierObjects,
      ...this.durableStats(),
      ...t,
      ...(this.cold?.stats() ?? NO_COLD_STATS),
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

  private durableStats(): Pick<PageStoreStats, 'recovery_seconds' | 'recovered_pages' | 'recovery_discarded_bytes' | 'recovery_lost_pages' | 'disk_syncs' | 'journal_records' | 'checkpoints'> {
    const r = this.durable?.report ?? null;
    return {
      recovery_seconds: r?.recovery_seconds ?? 0,
      recovered_pages: r?.recovered_pages ?? 0,
      recovery_discarded_bytes: r?.recovery_discarded_bytes ?? 0,
      recovery_lost_pages: r?.recovery_lost_pages ?? 0,
      disk_syncs: this.tier instanceof DiskTier ? this.tier.syncCount : 0,
      journal_records: this.jnl?.records ?? 0,
      checkpoints: this.jnl?.checkpoints ?? 0,
    };
  }

  /**
   * Bytes of metadata: slot maps (the 4 KiB blocks ever written: what the kernel backs), object
   * table, indexes, word table, pool bookkeeping. slotMapReservedBytes() is the slot maps' full size.
   */
  metadataBytes(): number {
    let b = this.objects.bytes() + this.words.bytes() + this.pool.metadataBytes() + (this.eph?.bytes() ?? 0) + (this.cold?.metadataBytes() ?? 0);
    for (let a = 0; a < this.slotMaps.length; a++) {
      const m = this.slotMaps[a];
      if (!m) continue;
      b += Math.min(m.byteLength, this.touchedBlocks[a]! * 4096) + this.touched[a]!.byteLength;
    }
    for (const ix of this.domainIndex) b += ix.bytes();
    return b;
  }

  /** Bytes reserved for slot maps (4 per slot of every area, written or not); the kernel backs only written blocks. */
  slotMapReservedBytes(): number {
    let b = 0;
    for (const m of this.slotMaps) if (m) b += m.byteLength;
    return b;
  }

  // ---------------------------------------------------------------------------------------------
  // Core: store

  /**
   * storeOne for the synchronous API: reads cold duplicate candidates with a blocking pread. It
   * cannot wait for a write buffer (the write completes on the event loop this call is holding),
   * so when both buffers are in flight it refuses (reject_reclaim_fail); the async calls wait.
   */
  private storeSync(area: number, slots: Uint32Array, offset: number, src: Uint8Array, at: number): number {
    const r = this.storeOne(area, slots, offset, src, at, true);
    if (r !== S_WAIT_ROOM) return r;
    this.c.reject_reclaim_fail++;
    this.lastReject = 'reject_reclaim_fail';
    return S_RECLAIM_FAIL;
  }

  /** The async continuation of startStoreBatch from page i, whose first attempt returned `first`. */
  private async storeRest(area: AreaId, offset: number, pages: Uint8Array, i: number, n: number, first: number,
    why?: { r: StoreResult }): Promise<number> {
    const P = this.pageSize;
    let r = first;
    let hints: Map<number, { w0: number; w1: number; same: number }> | null = null;
    for (;;) {
      if (r === S_WAIT_ROOM) {
        this.c.store_waits++;
        this.maintenance.kick();
        await this.maintenance.whenRoom();
      } else if (r === S_WAIT_VERIFY) {
        hints ??= new Map();
        await this.readCandidate(this.verifyId, pages, i * P, hints);
      } else if (r === S_OK) {
        hints = null;
        if (++i === n) return n;
        this.c.store_calls++;
      } else {
        if (why) why.r = STORE_RESULTS[r]!;
        return i;
      }
      if (this.closed) throw new ZdedupError('ERR_CLOSED', 'page store is closed');
      this.hints = hints;
      try {
        r = this.storeOne(area, this.slotsOf(area), offset + i, pages, i * P, false);
      } finally {
        this.hints = null;
      }
    }
  }

  /** Reads tier-only object `id` and records in `hints` whether it holds page src[at..]. */
  private async readCandidate(id: number, src: Uint8Array, at: number, hints: Map<number, { w0: number; w1: number; same: number }>): Promise<void> {
    const o = this.objects;
    const w0 = o.w0[id]!, w1 = o.w1[id]!, len = o.lens[id]!, lo = o.keys.lo[id]!, hi = o.keys.hi[id]!;
    const out = Buffer.alloc(this.pageSize); // per cold-duplicate check, not per page stored
    let same = 0; // 1 same, 0 different, -2 unreadable (never shared, not a mismatch)
    await this.tierSlot();
    const buf = this.readBufs.pop() ?? Buffer.alloc(this.pageSize);
    try {
      await this.tier!.read(w0, w1, id, len, lo, hi, buf, 0);
      same = !this.decode(buf, 0, len, out, 0, lo, hi, false) ? -2 : out.compare(src, at, at + this.pageSize, 0, this.pageSize) === 0 ? 1 : 0;
      // A cold object that new stores duplicate is hot again: bring it back into RAM when the
      // pool has a free slot for it, so the next duplicates compare in RAM instead of reading disk.
      if (same === 1) this.maybePromote(id, w0, w1, buf, len, true);
    } catch {
      same = -2; // unreadable: never share with it (counted by the tier)
    } finally {
      this.releaseTierSlot(buf);
    }
    hints.set(id, { w0, w1, same });
  }

  private storeOne(area: number, slots: Uint32Array, offset: number, src: Uint8Array, at: number, sync: boolean): number {
    const P = this.pageSize;
    const c = this.c;
    const page = at === 0 && src.length === P ? src : src.subarray(at, at + P);
    const old = slots[offset]!;
    const v = this.acquire(area, page, sync, old);
    if (v < 0) return -v;
    if (v === old && (v & SAME) === 0) return S_OK; // same content rewritten in place (no new reference taken)
    this.release(area, old);
    slots[offset] = v;
    this.touch(area, offset);
    this.count(area, old, 1);
    if ((v & SAME) !== 0) {
      c.same_filled_pages++;
      this.areaSame[area]!++;
      if (v === SAME) { c.zero_pages++; this.areaZero[area]!++; }
    }
    if (this.jnl !== null) this.jnl.note(area, offset);
    return S_OK;
  }

  /**
   * Takes a reference to `page`'s content in `area`'s dedup domain and returns the value that
   * holds it (SAME | w, or id + 1), or -S_* when it cannot (nothing changed then). When the
   * content is object `keep` (a slot value the caller holds), returns `keep` without a new
   * reference.
   */
  private acquire(area: number, page: Uint8Array, sync: boolean, keep: number): number {
    const P = this.pageSize;
    const c = this.c;
    if (isSameFilled(page, P)) return (SAME | this.words.acquire(wordLo(page), wordHi(page))) >>> 0;

    this.fp.hash(page, P);
    const lo = this.fp.lo, hi = this.fp.hi;
    const index = this.domainIndex[this.sharedDedup ? 0 : area]!;
    index.probeStart(lo, hi);
    for (let id = index.probeNext(); id >= 0; id = index.probeNext()) {
      if (this.verify) {
        const same = this.sameContent(id, page, sync);
        if (same === -1) { this.verifyId = id; return -S_WAIT_VERIFY; }
        if (same === 0) { c.verify_mismatch++; continue; }
        if (same === -2) continue; // unreadable candidate: counted as decompress_fail (or by the tier), not as a mismatch
      }
      // Durable mode: a persistent slot never shares a RAM-only (ephemeral) object: it is not in the log.
      if (this.durable !== null && !this.ramOnly && (this.objects.flags[id]! & IN_TIER) === 0) continue;
      c.dedup_hits++;
      const f = this.objects.flags[id]!;
      if ((f & IN_RAM) !== 0) this.objects.flags[id] = f | REFERENCED; // shared again: a use, like a load
      this.cold?.touch(id);
      if (keep === id + 1) return keep;
      this.objects.incRef(id);
      return id + 1;
    }

    // A new object: staged for a worker to compress when it can be, else compressed here.
    const o = this.objects;
    if (this.stage !== null && this.stageable(area, page)) {
      const id = o.newId();
      o.flags[id] = IN_STAGE;
      if (o.owner !== null) o.owner[id] = area;
      this.stage.stage(id, area, page);
      this.addObject(index, id, lo, hi, P); // counted raw until install() has its length
      return id + 1;
    }
    let len = this.codec.compress(page, P, this.scratch, this.incompressibleCap);
    const raw = len === 0;
    if (raw) len = P;
    const bytes = raw ? page : this.scratch;
    const id = o.newId();
    const placed = this.place(area, id, lo, hi, raw, bytes, len);
    if (placed !== S_OK) { o.freeId(id); return -placed; }
    this.addObject(index, id, lo, hi, len);
    if (raw) c.stored_incompressible_pages++;
    return id + 1;
  }

  /** Fills new object `id`'s row (one reference, `len` stored bytes), indexes it and counts it. */
  private addObject(index: FingerprintIndex, id: number, lo: number, hi: number, len: number): void {
    const o = this.objects;
    o.lens[id] = len;
    o.keys.lo[id] = lo;
    o.keys.hi[id] = hi;
    o.refs[id] = 1;
    index.insert(id);
    this.c.unique_objects++;
    this.c.compressed_bytes += len;
  }

  /**
   * A new object of `area` may be staged: it does not look random, a slot is free (after taking
   * the workers' answers, when none was), and nothing about its placement must be decided now:
   * not an ephemeral page, no pool quota, pool not full. (Durable mode has no stage: the log
   * wants objects compressed at store time.)
   */
  private stageable(area: number, page: Uint8Array): boolean {
    if (this.ramOnly || this.poolFull || this.areaQuota[area]! > 0) return false;
    // A page that looks random is almost always stored raw after one quick failed try: staging
    // it (copy in, copy out, install) cost more than that try (random corpus, 2 cores: 276 vs
    // 338 MB/s with the stage). It is compressed here instead.
    if (looksRandom(page, this.pageSize)) return false;
    const st = this.stage!;
    if (!st.canStage()) st.drain(this.installStaged);
    return st.canStage();
  }

  /**
   * Installs staged object `id` with its compressed bytes (len 0: incompressible, `bytes` is the
   * raw page): placed as a new object would have been. False keeps it staged (retried at the
   * next drain): the pool had no room for it now.
   */
  private install(id: number, area: number, len: number, bytes: Uint8Array): boolean {
    const o = this.objects;
    const P = this.pageSize;
    const raw = len === 0;
    const n = raw ? P : len;
    // placeIn, not place: a staged object that must wait is not a refused store (nothing to log).
    const r = this.poolFull && this.tier === null ? S_POOL_LIMIT : this.placeIn(area, id, o.keys.lo[id]!, o.keys.hi[id]!, raw, bytes, n);
    if (r !== S_OK) { o.flags[id] = IN_STAGE; return false; }
    o.lens[id] = n;
    this.c.compressed_bytes += n - P;
    if (raw) this.c.stored_incompressible_pages++;
    return true;
  }

  /**
   * Blocks until the compression workers have answered every staged page and installs them all
   * (bounded by one stage of compression, a few ms). For tests and exact figures; the store
   * never needs it for correctness.
   */
  settleStage(): void {
    this.stage?.settle(this.installStaged);
  }

  /** Test hook: compression worker w, or null (no stage). */
  compressWorkerForTest(w: number): import('node:worker_threads').Worker | null {
    return this.stage?.workerForTest(w) ?? null;
  }

  /**
   * Puts a new object's bytes (bytes[0, len)) in RAM, or in the tier when the pool is full.
   * Sets flags and locations; returns S_OK or why not (nothing changed then).
   */
  private place(area: number, id: number, lo: number, hi: number, raw: boolean, bytes: Uint8Array, len: number): number {
    const r = this.placeIn(area, id, lo, hi, raw, bytes, len);
    if (r === S_OK) {
      if (this.refusing) {
        this.refusing = false;
        this.events('info', 'stores accepted again', { pool_total_size: this.pool.totalSize() });
      }
    } else if (r < S_WAIT_ROOM && !this.refusing) {
      this.refusing = true;
      this.events('warn', 'stores refused (ENOSPC to NBD clients) until there is room again', {
        why: STORE_RESULTS[r], area: this.names[area], pool_total_size: this.pool.totalSize(), max_pool_bytes: this.pool.maxBytes,
      });
    }
    return r;
  }

  private placeIn(area: number, id: number, lo: number, hi: number, raw: boolean, bytes: Uint8Array, len: number): number {
    const o = this.objects;
    const c = this.c;
    const tier = this.tier;
    const codec = raw ? CODEC_RAW : this.codecId;
    // Durable mode: persistent objects go to the log first; an ephemeral page stays RAM only.
    if (this.durable !== null && !this.ramOnly) return this.placeDurable(area, id, lo, hi, codec, bytes, len);
    if (o.owner !== null) o.owner[id] = area;
    // Ephemeral pages exist: the pool tries RAM even while full, making room from them first.
    let ramAllowed = !this.poolFull || this.ramOnly || (this.eph !== null && this.eph.count > 0);
    const quota = this.areaQuota[area]!;
    if (ramAllowed && quota > 0 && this.areaRam[area]! + len > quota) {
      c.quota_limit_hit++;
      // Make room from this area's own coldest objects (never another area's), else bypass RAM.
      const need = this.areaRam[area]! + len - quota;
      if (tier === null) { this.lastReject = 'reject_quota'; return S_QUOTA; }
      if (this.evictArea(area, need) < need) ramAllowed = false;
    }
    // A cache must not compete with persistent data for a full pool: without ephemeral pages to
    // make room from, an ephemeral put is refused while stores bypass RAM.
    if (this.ramOnly && this.poolFull && this.eph!.count === 0) return S_POOL_LIMIT;
    if (ramAllowed) {
      let a = this.pool.alloc(id, len);
      if (a === 'pool_limit' && this.eph !== null && this.eph.count > 0) a = this.reclaimEphemeral(id, len);
      if (a === 'ok') {
        this.pool.locate(id);
        this.pool.locBuf.set(bytes.subarray(0, len), this.pool.locOff);
        o.flags[id] = IN_RAM;
        o.lruPushHead(id);
        this.ramBytes += len;
        if (o.owner !== null) this.areaRam[area]! += len;
        this.cold?.touch(id);
        if (this.writethrough && !this.ramOnly && tier!.append(id, lo, hi, codec, bytes, 0, len) === 'ok') {
          o.flags[id] = IN_RAM | IN_TIER;
          o.w0[id] = tier!.lastW0;
          o.w1[id] = tier!.lastW1;
          this.tierObjects++;
          c.writethrough_pages++;
        }
        return S_OK;
      }
      if (this.ramOnly) return a === 'pool_limit' ? S_POOL_LIMIT : S_ALLOC_FAIL; // an ephemeral page: RAM or nothing
      if (a === 'zspage_limit' || tier === null) {
        if (a === 'pool_limit') { c.pool_limit_hit++; this.lastReject = 'reject_pool_limit'; return S_POOL_LIMIT; }
        c.reject_alloc_fail++;
        this.lastReject = 'reject_alloc_fail';
        return S_ALLOC_FAIL;
      }
      c.pool_limit_hit++;
      this.poolFull = true;
      this.maintenance.kick();
    }
    // The pool is full (or refilling below the accept threshold, or the area is at its quota): straight to the tier.
    const r = tier!.append(id, lo, hi, codec, bytes, 0, len);
    if (r === 'ok') {
      o.flags[id] = IN_TIER;
      o.w0[id] = tier!.lastW0;
      o.w1[id] = tier!.lastW1;
      this.tierObjects++;
      c.pool_bypass_pages++;
      return S_OK;
    }
    if (r === 'busy') return S_WAIT_ROOM;
    c.reject_reclaim_fail++;
    this.lastReject = 'reject_reclaim_fail';
    return S_RECLAIM_FAIL;
  }

  /**
   * Durable mode: a new object goes to the log first (with a new serial), so the journal entry
   * that will name it follows it on the medium; a copy in RAM is kept when the pool has room.
   */
  private placeDurable(area: number, id: number, lo: number, hi: number, codec: number, bytes: Uint8Array, len: number): number {
    const o = this.objects;
    const tier = this.tier!;
    const serial = this.durable!.serial;
    const r = tier.append(id, lo, hi, codec, bytes, 0, len, serial);
    if (r === 'busy') return S_WAIT_ROOM;
    if (r !== 'ok') { this.c.reject_reclaim_fail++; this.lastReject = 'reject_reclaim_fail'; return S_RECLAIM_FAIL; }
    this.durable!.serial++;
    o.setSerial(id, serial);
    o.flags[id] = IN_TIER;
    o.w0[id] = tier.lastW0;
    o.w1[id] = tier.lastW1;
    if (o.owner !== null) o.owner[id] = area;
    this.tierObjects++;
    this.c.writethrough_pages++;
    const quota = this.areaQuota[area]!;
    if (this.poolFull || (quota > 0 && this.areaRam[area]! + len > quota)) return S_OK;
    if (this.pool.alloc(id, len) !== 'ok') {
      // RAM is only a cache here: the object is in the log already. Let the writer make room.
      if (this.pool.maxBytes > 0) { this.c.pool_limit_hit++; this.poolFull = true; this.maintenance.kick(); }
      return S_OK;
    }
    this.pool.locate(id);
    this.pool.locBuf.set(bytes.subarray(0, len), this.pool.locOff);
    o.flags[id] = IN_RAM | IN_TIER;
    o.lruPushHead(id);
    this.ramBytes += len;
    if (o.owner !== null) this.areaRam[area]! += len;
    return S_OK;
  }

  /**
   * 1 when object `id` holds exactly `page`, 0 when not, -2 when it cannot be read or decoded
   * (counted once, as decompress_fail or disk_read_errors; never shared), -1 when it lives only on the tier's medium and `sync` is false (the caller reads it, then
   * retries with the answer as a hint).
   */
  private sameContent(id: number, page: Uint8Array, sync: boolean): number {
    const P = this.pageSize;
    const o = this.objects;
    const len = o.lens[id]!;
    let buf: Uint8Array, off: number;
    if ((o.flags[id]! & IN_RAM) !== 0) {
      this.pool.locate(id);
      buf = this.pool.locBuf; off = this.pool.locOff;
    } else if ((o.flags[id]! & IN_STAGE) !== 0) {
      return Buffer.compare(this.stage!.page(this.stage!.slotOf(id)), page) === 0 ? 1 : 0;
    } else if ((o.flags[id]! & IN_COLD) !== 0) {
      if (!this.cold!.locate(id)) { this.c.decompress_fail++; return -2; } // damaged group: never share with it
      return this.cold!.pageBuf.compare(page, 0, P, this.cold!.pageOff, this.cold!.pageOff + P) === 0 ? 1 : 0;
    } else {
      const w0 = o.w0[id]!, w1 = o.w1[id]!;
      const h = this.hints?.get(id);
      if (h !== undefined && h.w0 === w0 && h.w1 === w1) return h.same;
      const tier = this.tier!;
      if (tier.locateBuffered(w0, w1)) {
        buf = tier.locBuf; off = tier.locOff;
      } else if (sync) {
        try {
          tier.readSync(w0, w1, id, len, o.keys.lo[id]!, o.keys.hi[id]!, this.tierScratch, 0);
        } catch {
          return -2; // unreadable (counted in disk_read_errors): never share with it
        }
        buf = this.tierScratch; off = 0;
      } else {
        return -1;
      }
    }
    if (len === P) return Buffer.compare(buf.subarray(off, off + P), page) === 0 ? 1 : 0;
    const out = this.scratch;
    if (!this.codec.decompress(buf.subarray(off, off + len), len, out, P)) {
      this.c.decompress_fail++; // corrupt object: never share with it
      return -2;
    }
    return out.compare(page, 0, P, 0, P) === 0 ? 1 : 0;
  }

  // ---------------------------------------------------------------------------------------------
  // Core: load

  private loadOne(v: number, into: Uint8Array, at: number, sync: boolean): number {
    const P = this.pageSize;
    const c = this.c;
    c.load_calls++;
    if (v === 0) { c.load_misses++; return L_MISS; }
    c.load_hits++;
    if (v & SAME) {
      const w = v & ~SAME;
      fillWord(at === 0 && into.length === P ? into : into.subarray(at, at + P), P, this.words.keys.lo[w]!, this.words.keys.hi[w]!);
      return L_HIT;
    }
    const id = v - 1;
    const o = this.objects;
    const len = o.lens[id]!;
    const f = o.flags[id]!;
    if ((f & IN_RAM) !== 0) {
      o.flags[id] = f | REFERENCED;
      this.cold?.touch(id);
      this.pool.locate(id);
      this.decode(this.pool.locBuf, this.pool.locOff, len, into, at, o.keys.lo[id]!, o.keys.hi[id]!, true);
      return L_HIT;
    }
    if ((f & IN_STAGE) !== 0) { // a raw page in the stage's ring, checked like every load
      this.decode(this.stage!.page(this.stage!.slotOf(id)), 0, P, into, at, o.keys.lo[id]!, o.keys.hi[id]!, true);
      return L_HIT;
    }
    if ((f & IN_COLD) !== 0) { this.loadCold(id, into, at); return L_HIT; }
    const tier = this.tier!;
    const w0 = o.w0[id]!, w1 = o.w1[id]!;
    if (tier.locateBuffered(w0, w1)) {
      this.decode(tier.locBuf, tier.locOff, len, into, at, o.keys.lo[id]!, o.keys.hi[id]!, true);
      return L_HIT;
    }
    if (!sync) { c.load_hits--; c.load_calls--; return L_NEED_READ; } // counted when the read is issued
    const lo = o.keys.lo[id]!, hi = o.keys.hi[id]!;
    tier.readSync(w0, w1, id, len, lo, hi, this.tierScratch, 0);
    c.disk_loads++;
    this.decode(this.tierScratch, 0, len, into, at, lo, hi, true);
    this.maybePromote(id, w0, w1, this.tierScratch, len);
    return L_HIT;
  }

  /** Reads tier-only object `id` into into[at..] (a page), checked; then maybe promotes it. */
  private async readObject(id: number, into: Uint8Array, at: number): Promise<void> {
    const o = this.objects;
    // The location is captured now, before any await: the load returns the content of the call's time.
    const w0 = o.w0[id]!, w1 = o.w1[id]!, len = o.lens[id]!, lo = o.keys.lo[id]!, hi = o.keys.hi[id]!;
    this.c.load_calls++;
    this.c.load_hits++;
    this.tier!.pin(w0);
    try {
      await this.tierSlot();
    } finally {
      this.tier!.unpin(w0);
    }
    const buf = this.readBufs.pop() ?? Buffer.alloc(this.pageSize);
    try {
      await this.tier!.read(w0, w1, id, len, lo, hi, buf, 0);
      this.c.disk_loads++;
      this.decode(buf, 0, len, into, at, lo, hi, true);
      this.maybePromote(id, w0, w1, buf, len);
    } finally {
      this.releaseTierSlot(buf);
    }
  }

  /**
   * Tier reads in flight are bounded (TIER_READS_IN_FLIGHT) across the whole store: a 32 MiB READ
   * of cold pages queues its 8192 page reads here instead of holding 8192 buffers at once.
   */
  private tierSlot(): Promise<void> | void {
    if (this.tierReads < TIER_READS_IN_FLIGHT) { this.tierReads++; return; }
    return new Promise<void>((r) => { this.tierQueue.push(r); });
  }

  private releaseTierSlot(buf: Buffer): void {
    if (this.readBufs.length < TIER_READS_IN_FLIGHT) this.readBufs.push(buf);
    const next = this.tierQueue.shift();
    if (next) next(); else this.tierReads--;
  }

  /**
   * Decodes stored bytes src[off, off+len) into dst[at, at+P) and checks the fingerprint.
   * `strict`: throw ERR_DECOMPRESS on failure (a load); else return false (a dedup check).
   */
  private decode(src: Uint8Array, off: number, len: number, dst: Uint8Array, at: number, lo: number, hi: number, strict: boolean): boolean {
    const P = this.pageSize;
    const out = at === 0 && dst.length === P ? dst : dst.subarray(at, at + P);
    if (len === P) out.set(src.subarray(off, off + P));
    else if (!this.codec.decompress(src.subarray(off, off + len), len, out, P)) {
      this.c.decompress_fail++;
      if (!strict) return false;
      throw new ZdedupError('ERR_DECOMPRESS', `object failed to decompress (${this.codec.spec}, ${len} bytes)`);
    }
    if (this.checkLoads && strict) {
      this.fp.hash(out, P);
      if (this.fp.lo !== lo || this.fp.hi !== hi) {
        this.c.decompress_fail++;
        throw new ZdedupError('ERR_DECOMPRESS', 'object does not match its fingerprint: corrupt');
      }
    }
    return true;
  }

  /**
   * Promotion policy: a page read from the tier comes back into RAM (keeping its tier copy, so
   * dropping it again costs no write) when the pool is below its accept threshold — i.e. when RAM
   * has room without pushing anything else out. Otherwise it stays cold: a load under memory
   * pressure must not evict a hotter page to make room for a page that may never be read again.
   */
  private maybePromote(id: number, w0: number, w1: number, bytes: Uint8Array, len: number, dedupHit = false): void {
    const o = this.objects;
    if (!o.isLive(id) || o.flags[id] !== IN_TIER || o.w0[id] !== w0 || o.w1[id] !== w1) return;
    // A load promotes only below the accept threshold; a dedup hit whenever the pool has room
    // (the pool's limit still holds: alloc refuses beyond it).
    if (!dedupHit && (this.poolFull || (this.pool.maxBytes > 0 && this.pool.totalSize() >= this.acceptBytes))) return;
    if (o.owner !== null) {
      const q = this.areaQuota[o.owner[id]!]!;
      if (q > 0 && this.areaRam[o.owner[id]!]! + len > q) return; // promotion never pushes an area past its quota
    }
    if (this.pool.alloc(id, len) !== 'ok') return;
    if (o.owner !== null) this.areaRam[o.owner[id]!]! += len;
    this.pool.locate(id);
    this.pool.locBuf.set(bytes.subarray(0, len), this.pool.locOff);
    o.flags[id] = dedupHit ? IN_RAM | IN_TIER | REFERENCED : IN_RAM | IN_TIER;
    o.lruPushHead(id);
    this.ramBytes += len;
    this.c.promoted_pages++;
  }

  // ---------------------------------------------------------------------------------------------
  // Core: release

  private clear(area: number, slots: Uint32Array, offset: number): void {
    const old = slots[offset]!;
    if (old === 0) return;
    this.release(area, old);
    slots[offset] = 0;
    this.count(area, old, 0);
    this.c.invalidated_pages++;
    if (this.jnl !== null) this.jnl.note(area, offset);
  }

  /** Drops the reference held by a slot value (0, SAME|w or id+1). Does not touch stored_pages. */
  private release(area: number, v: number): void {
    if (v !== 0 && (v & SAME) !== 0) {
      this.c.same_filled_pages--;
      this.areaSame[area]!--;
      if (v === SAME) { this.c.zero_pages--; this.areaZero[area]!--; }
    }
    this.dropRef(area, v);
  }

  /** Drops a reference (a slot's or an ephemeral entry's); returns the RAM bytes that freed. */
  private dropRef(area: number, v: number): number {
    if (v === 0) return 0;
    if (v & SAME) { this.words.release(v & ~SAME); return 0; }
    const id = v - 1;
    const o = this.objects;
    if (o.decRef(id) > 0) return 0;
    this.domainIndex[this.sharedDedup ? 0 : area]!.remove(id);
    const len = o.lens[id]!;
    const f = o.flags[id]!;
    if ((f & IN_RAM) !== 0) this.dropRam(id, len);
    if ((f & IN_TIER) !== 0) { this.tier!.release(o.w0[id]!, o.w1[id]!, len); this.tierObjects--; }
    if ((f & IN_COLD) !== 0) this.cold!.release(id);
    this.c.unique_objects--;
    this.c.compressed_bytes -= len;
    if ((f & IN_STAGE) !== 0) this.stage!.forget(id);
    else if (len === this.pageSize) this.c.stored_incompressible_pages--;
    o.freeId(id);
    return (f & IN_RAM) !== 0 ? len : 0;
  }

  private dropRam(id: number, len: number): void {
    if (this.objects.owner !== null) this.areaRam[this.objects.owner[id]!]! -= len;
    this.pool.free(id);
    this.objects.lruRemove(id);
    this.objects.flags[id] = this.objects.flags[id]! & ~(IN_RAM | REFERENCED);
    this.ramBytes -= len;
  }

  /** Notes that the slot map block holding `offset` has been written (see `touched`). */
  private touch(area: number, offset: number): void {
    const b = offset >>> 10;
    const m = this.touched[area]!;
    const bit = 1 << (b & 31);
    if ((m[b >>> 5]! & bit) === 0) {
      m[b >>> 5]! |= bit;
      this.touchedBlocks[area]!++;
    }
  }

  /** Keeps stored_pages right when a slot goes from `old` to empty (now = 0) or filled (now = 1). */
  private count(area: number, old: number, now: 0 | 1): void {
    const d = now - (old !== 0 ? 1 : 0);
    this.c.stored_pages += d;
    this.areaStored[area]! += d;
  }

  // ---------------------------------------------------------------------------------------------
  // Mechanisms for maintenance.ts (the policy lives there)

  /** Pool bytes above which the writer works (the limit while refusing, else the accept threshold). */
  poolOverTarget(): boolean {
    if (this.pool.maxBytes === 0 || this.tier === null) return false;
    const size = this.pool.totalSize() + (this.cold?.bytes() ?? 0); // cold segments are RAM too
    if (this.poolFull && size <= this.acceptBytes) this.poolFull = false;
    return this.poolFull || size > this.acceptBytes;
  }

  /** Bytes of the pool beyond the objects it holds (free slots in zspages, empty units). */
  poolWaste(): number {
    return this.pool.totalSize() - this.ramBytes;
  }

  /** RAM the store holds for data: pool arenas and cold segments (what a reclaiming GC watches). */
  heldBytes(): number {
    return this.pool.totalSize() + (this.cold?.bytes() ?? 0);
  }

  /** Bytes held in RAM by objects (what eviction reduces). */
  poolObjectBytes(): number {
    return this.ramBytes;
  }

  /** The accept threshold in bytes. */
  poolTargetBytes(): number {
    return this.acceptBytes;
  }

  /**
   * Writes back (or drops, when already in the tier) up to `budgetBytes` of the least recently
   * used RAM objects, giving referenced ones a second chance. Returns what stopped it.
   */
  evictOldest(budgetBytes: number): 'done' | 'empty' | 'busy' | 'full' | 'failed' {
    const o = this.objects;
    let freed = 0;
    // Bounded work per call: second chances count too, so a list of referenced objects is
    // turned over a few thousand entries per call, never all at once.
    let rotations = Math.min(o.lruCount, EVICT_MAX_ROTATIONS);
    while (freed < budgetBytes) {
      const id = o.lruOldest();
      if (id < 0) return 'empty';
      const f = o.flags[id]!;
      if ((f & REFERENCED) !== 0) {
        if (rotations-- <= 0) return 'done';
        o.flags[id] = f & ~REFERENCED;
        o.lruRemove(id);
        o.lruPushHead(id);
        continue;
      }
      const r = this.moveOut(id);
      if (r !== 'ok') return r;
      freed += o.lens[id]!;
    }
    return 'done';
  }

  /**
   * Takes RAM object `id` out of RAM: appended to the tier first unless the tier already holds it
   * (then the drop costs no write). Nothing changes unless 'ok'.
   */
  private moveOut(id: number): AppendResult {
    const o = this.objects;
    const tier = this.tier!;
    const f = o.flags[id]!;
    const len = o.lens[id]!;
    if ((f & IN_TIER) === 0) {
      this.pool.locate(id);
      const r = tier.append(id, o.keys.lo[id]!, o.keys.hi[id]!, len === this.pageSize ? CODEC_RAW : this.codecId, this.pool.locBuf, this.pool.locOff, len);
      if (r !== 'ok') return r;
      o.w0[id] = tier.lastW0;
      o.w1[id] = tier.lastW1;
      o.flags[id] = f | IN_TIER;
      this.tierObjects++;
      this.c.written_back_pages++;
    } else {
      this.c.evicted_clean_pages++;
    }
    this.dropRam(id, len);
    return 'ok';
  }

  /**
   * Quota enforcement: moves `area`'s own coldest RAM objects out (written to the tier, or just
   * dropped when the tier already has them) until `need` bytes are freed, looking at most
   * QUOTA_SCAN entries up from the LRU tail. Returns the bytes freed.
   */
  private evictArea(area: number, need: number): number {
    const o = this.objects;
    const owner = o.owner!;
    let freed = 0;
    let id = o.lruOldest();
    for (let seen = 0; id >= 0 && freed < need && seen < QUOTA_SCAN; seen++) {
      const newer = o.lruNewer(id);
      if (owner[id] === area) {
        if (this.moveOut(id) !== 'ok') break;
        freed += o.lens[id]!;
      }
      id = newer;
    }
    return freed;
  }

  // ---- the cold tier (policy in maintenance.ts; storage in cold.ts) ----------------------------

  /** Serves a load of cold object `id` from its group; may promote it (cold.ts: second load). */
  private loadCold(id: number, into: Uint8Array, at: number): void {
    const cold = this.cold!;
    const o = this.objects;
    if (!cold.locate(id)) {
      this.c.decompress_fail++;
      throw new ZdedupError('ERR_DECOMPRESS', 'cold group failed to decompress: corrupt');
    }
    this.decode(cold.pageBuf, cold.pageOff, this.pageSize, into, at, o.keys.lo[id]!, o.keys.hi[id]!, true);
    const room = !this.poolFull && (this.pool.maxBytes === 0 || this.pool.totalSize() < this.acceptBytes) && o.owner === null;
    if (!cold.loaded(id, room)) return;
    const P = this.pageSize;
    const page = cold.pageBuf.subarray(cold.pageOff, cold.pageOff + P);
    const len = this.codec.compress(page, P, this.scratch, this.incompressibleCap);
    if (len !== o.lens[id] || this.pool.alloc(id, len) !== 'ok') return; // stays cold
    this.pool.locate(id);
    this.pool.locBuf.set(this.scratch.subarray(0, len), this.pool.locOff);
    cold.promoted(id);
    o.flags[id] = IN_RAM;
    o.lruPushHead(id);
    this.ramBytes += len;
    cold.touch(id);
  }

  /** One bounded step of the cold pass; false when nothing was idle enough (see ColdTier.passStep). */
  coldPassStep(): boolean {
    return this.cold !== null && this.cold.passStep();
  }

  /** One cold-segment cleaning step when garbage is worth it; false when none was needed. */
  coldCleanStep(): boolean {
    return this.cold !== null && this.cold.needsCleaning() && this.cold.cleanStep();
  }

  /** Live objects in cold groups. */
  coldObjects(): number {
    return this.cold?.liveObjects() ?? 0;
  }

  /**
   * Writeback of cold objects, oldest segment first: each live member of the oldest group is
   * recompressed with the store's codec and appended to the tier (the disk tier holds objects
   * one by one, so a load from disk never reads a whole group). Same outcomes as evictOldest.
   */
  evictCold(budgetBytes: number): 'done' | 'empty' | 'busy' | 'full' | 'failed' {
    const cold = this.cold;
    const tier = this.tier;
    if (cold === null || tier === null) return 'empty';
    const o = this.objects;
    const P = this.pageSize;
    let freed = 0;
    while (freed < budgetBytes) {
      const n = cold.oldestGroup(this.coldIds, this.coldIdx);
      if (n === 0) return 'empty';
      if (n < 0) continue; // damaged: its segment is set aside, its pages answer EIO
      for (let j = 0; j < n; j++) {
        const id = this.coldIds[j]!;
        const page = cold.pageBuf.subarray(this.coldIdx[j]! * P, (this.coldIdx[j]! + 1) * P);
        let len = this.codec.compress(page, P, this.scratch, this.incompressibleCap);
        const raw = len === 0;
        if (raw) len = P;
        const r = tier.append(id, o.keys.lo[id]!, o.keys.hi[id]!, raw ? CODEC_RAW : this.codecId, raw ? page : this.scratch, 0, len);
        if (r !== 'ok') return r;
        cold.movedOut(id);
        o.flags[id] = IN_TIER;
        o.w0[id] = tier.lastW0;
        o.w1[id] = tier.lastW1;
        this.c.compressed_bytes += len - o.lens[id]!;
        if (raw && o.lens[id] !== P) this.c.stored_incompressible_pages++;
        o.lens[id] = len;
        this.tierObjects++;
        this.c.written_back_pages++;
        freed += len;
      }
    }
    return 'done';
  }

  /** Durable mode: the live object whose tier copy is at (w0, w1), found by its fingerprint; -1 if none. */
  private objectAt(id: number, w0: number, w1: number, lo: number, hi: number): number {
    const o = this.objects;
    if (o.isLive(id) && o.w0[id] === w0 && o.w1[id] === w1) return id;
    for (const index of this.domainIndex) {
      index.probeStart(lo, hi);
      for (let c = index.probeNext(); c >= 0; c = index.probeNext()) if (o.w0[c] === w0 && o.w1[c] === w1 && (o.flags[c]! & IN_TIER) !== 0) return c;
    }
    return -1;
  }

  /** The cleaner's view of the object table (see CleaningOwner). */
  readonly cleaningOwner: CleaningOwner & { resolve?: CleaningOwner['resolve'] } = {
    liveness: (id: number, w0: number, w1: number): Liveness => {
      const o = this.objects;
      if (!o.isLive(id) || (o.flags[id]! & IN_TIER) === 0 || o.w0[id] !== w0 || o.w1[id] !== w1) return 'dead';
      if ((o.flags[id]! & IN_RAM) !== 0 && this.durable === null) {
        o.flags[id] = o.flags[id]! & ~IN_TIER; // RAM keeps the only copy; a later eviction rewrites it
        this.tierObjects--;
        return 'drop';
      }
      return 'move';
    },
    relocated: (id: number, w0: number, w1: number): void => {
      this.objects.w0[id] = w0;
      this.objects.w1[id] = w1;
    },
  };

  // ---------------------------------------------------------------------------------------------
  // Validation (public edge only)

  private slotsOf(area: AreaId): Uint32Array {
    if (this.closed) throw new ZdedupError('ERR_CLOSED', 'page store is closed');
    const m = typeof area === 'number' && Number.isInteger(area) && area >= 0 ? this.slotMaps[area] : undefined;
    if (!m) throw new ZdedupError('ERR_UNKNOWN_AREA', `unknown area ${String(area)}`);
    return m;
  }

  private checkPool(pool: PoolId): void {
    if (this.closed) throw new ZdedupError('ERR_CLOSED', 'page store is closed');
    if (!(typeof pool === 'number' && Number.isInteger(pool) && pool >= 0 && this.isPool[pool] === true)) {
      throw new ZdedupError('ERR_UNKNOWN_AREA', `unknown pool ${String(pool)}`);
    }
  }

  private checkPoolIndex(index: number): void {
    if (!Number.isInteger(index) || index < 0 || index > 0xffffffff) {
      throw new ZdedupError('ERR_INVALID_ARGUMENT', `page index must be an integer in 0..2^32-1, got ${String(index)}`);
    }
  }

  private checkBatch(pages: Uint8Array): number {
    const P = this.pageSize;
    if (!(pages instanceof Uint8Array) || pages.length % P !== 0) {
      throw new ZdedupError('ERR_PAGE_LENGTH', `batch length must be a multiple of ${P}`);
    }
    return pages.length / P;
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

  /** Internal consistency check: refcounts equal slot references, counters equal recounts, locations agree. */
  checkInvariants(): void {
    this.pool.checkInvariants();
    this.objects.checkLru();
    const o = this.objects;
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
    if (this.eph !== null) {
      this.eph.checkInvariants();
      let objRefs = 0;
      this.eph.forEachValue((v) => { if ((v & SAME) === 0) { objRefs++; refsSeen.set(v - 1, (refsSeen.get(v - 1) ?? 0) + 1); } });
      if (objRefs !== this.ephObjRefs) throw new Error(`ephemeral object references ${this.ephObjRefs} != ${objRefs}`);
    }
    if (stored !== this.c.stored_pages) throw new Error(`stored_pages ${this.c.stored_pages} != ${stored}`);
    if (same !== this.c.same_filled_pages) throw new Error(`same_filled_pages ${this.c.same_filled_pages} != ${same}`);
    if (zero !== this.c.zero_pages) throw new Error(`zero_pages ${this.c.zero_pages} != ${zero}`);
    if (refsSeen.size !== this.c.unique_objects) throw new Error(`unique_objects ${this.c.unique_objects} != ${refsSeen.size}`);
    let ram = 0, ramBytes = 0, inTier = 0, bytes = 0, staged = 0;
    for (const [id, n] of refsSeen) {
      if (o.refCount(id) !== n) throw new Error(`object ${id}: refs ${o.refCount(id)} != ${n} slots`);
      const f = o.flags[id]!;
      if ((f & (IN_RAM | IN_TIER | IN_COLD | IN_STAGE)) === 0) throw new Error(`object ${id} has no location`);
      if ((f & IN_STAGE) !== 0) {
        if (f !== IN_STAGE) throw new Error(`staged object ${id} also has flags ${f}`);
        if (this.stage === null || this.stage.slotOf(id) < 0) throw new Error(`staged object ${id} has no stage slot`);
        staged++;
      }
      if (((f & IN_RAM) !== 0) !== this.pool.isAllocated(id)) throw new Error(`object ${id}: IN_RAM ${(f & IN_RAM) !== 0} but pool allocation ${this.pool.isAllocated(id)}`);
      if ((f & IN_RAM) !== 0) { ram++; ramBytes += o.lens[id]!; }
      if ((f & IN_TIER) !== 0) inTier++;
      bytes += o.lens[id]!;
    }
    if (ram !== o.lruCount) throw new Error(`RAM objects ${ram} != LRU count ${o.lruCount}`);
    if (ramBytes !== this.ramBytes) throw new Error(`ram bytes ${this.ramBytes} != ${ramBytes}`);
    if (inTier !== this.tierObjects) throw new Error(`tier objects ${this.tierObjects} != ${inTier}`);
    if (bytes !== this.c.compressed_bytes) throw new Error(`compressed_bytes ${this.c.compressed_bytes} != ${bytes}`);
    if (staged !== (this.stage?.staged ?? 0)) throw new Error(`staged objects ${this.stage?.staged ?? 0} != ${staged}`);
    if (this.tier instanceof DiskTier) this.tier.checkInvariants();
    this.cold?.checkInvariants();
  }

  /** Where the object behind a slot lives (tests): 'ram', 'tier', 'both', or null for none. */
  locationForTest(area: AreaId, offset: number): 'ram' | 'tier' | 'both' | 'cold' | 'stage' | null {
    const v = this.slotsOf(area)[offset]!;
    if (v === 0 || v & SAME) return null;
    const f = this.objects.flags[v - 1]!;
    if ((f & IN_COLD) !== 0) return 'cold';
    if ((f & IN_STAGE) !== 0) return 'stage';
    return (f & IN_RAM) !== 0 ? ((f & IN_TIER) !== 0 ? 'both' : 'ram') : 'tier';
  }

  /** Test hook: flips a byte of the object behind a slot, in RAM, else in the tier (to prove corruption is detected). */
  corruptForTest(area: AreaId, offset: number): void {
    const v = this.slotsOf(area)[offset]!;
    if (v === 0 || v & SAME) throw new Error('slot holds no object');
    const id = v - 1;
    this.settleStage(); // a staged page is a raw copy in RAM: corrupt what it becomes
    if ((this.objects.flags[id]! & IN_RAM) !== 0) {
      this.pool.locate(id);
      const i = this.pool.locOff + ((this.objects.lens[id]! / 2) | 0);
      this.pool.locBuf[i]! ^= 0x5a;
      return;
    }
    if ((this.objects.flags[id]! & IN_COLD) !== 0) { this.cold!.corruptForTest(id); return; }
    this.tier!.corruptForTest!(this.objects.w0[id]!, this.objects.w1[id]!);
  }
}

/** High 32 bits of an ephemeral key (a non-negative safe integer, or a bigint below 2^64). */
function keyHi(key: number | bigint): number {
  if (typeof key === 'bigint') {
    if (key < 0n || key >= 1n << 64n) throw new ZdedupError('ERR_INVALID_ARGUMENT', `key must be in 0..2^64-1, got ${key}`);
    return Number(key >> 32n);
  }
  if (!Number.isSafeInteger(key) || key < 0) throw new ZdedupError('ERR_INVALID_ARGUMENT', `key must be a non-negative safe integer or a bigint, got ${String(key)}`);
  return Math.floor(key / 0x100000000);
}

/** Low 32 bits of a key keyHi() accepted. */
function keyLo(key: number | bigint): number {
  return typeof key === 'bigint' ? Number(key & 0xffffffffn) : key >>> 0;
}
