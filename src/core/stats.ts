/**
 * The store's statistics: one structure, one name per outcome, shown under the same names
 * everywhere (CLI, /stats JSON, Prometheus as zdedup_<name>). Names follow kernel zswap's
 * debugfs where they apply.
 */

import type { TierStats } from '../tiers/tier.js';
import type { ColdStats } from './cold.js';

/** The tier's fields (backing_size, disk_*, write_amplification, cleaned_segments) come from TierStats, the cold tier's (cold_*) from ColdStats. */
export interface PageStoreStats extends TierStats, ColdStats {
  page_size: number;
  /** Live slots holding a page (same-filled included). zswap: stored_pages. */
  stored_pages: number;
  /** Live slots whose page is one 8-byte word repeated, zero pages included (zswap's historic meaning). */
  same_filled_pages: number;
  /** Live slots holding the zero page (a subset of same_filled_pages). */
  zero_pages: number;
  /** Live slots served by an object stored for another slot (sum over objects of refs - 1). */
  duplicate_pages: number;
  /** Live compressed (or raw) objects in the pool. */
  unique_objects: number;
  /** Live objects kept uncompressed because compression would not save 1/8 of a page. */
  stored_incompressible_pages: number;
  /** Bytes of arenas the pool holds. zswap: pool_total_size. */
  pool_total_size: number;
  /** The pool's byte limit (--max-pool); 0 = unbounded. */
  max_pool_bytes: number;
  /** stored_pages * page_size. */
  logical_bytes: number;
  /** Sum of the stored lengths of live objects, wherever they are (before size-class rounding). */
  compressed_bytes: number;
  /** Objects held in RAM (in the LRU list), and the sum of their stored lengths. */
  ram_objects: number;
  ram_compressed_bytes: number;
  /** Bytes of per-page and per-object metadata (typed arrays, tables, arena bookkeeping); slot maps count only the 4 KiB blocks ever written. */
  metadata_bytes: number;
  /** New pages waiting in the compression stage for a worker (0 when the stage is off or has caught up). */
  stage_pages: number;
  /** Shared memory of the compression stage (raw pages + outputs; fixed, 0 when off). */
  stage_bytes: number;
  /** Bytes reserved for slot maps (4 per slot, written or not): address space, backed by the kernel only where written. */
  slot_map_reserved_bytes: number;
  /** unique_objects * page_size / compressed_bytes (1 when empty). */
  compression_ratio: number;
  /** (stored_pages - same_filled_pages) / unique_objects (1 when empty). */
  dedup_ratio: number;
  /** logical_bytes / (pool_total_size + cold_bytes + stage_bytes + metadata_bytes). */
  effective_ratio: number;
  /** Stores refused because the allocator could not place the object (id space exhausted). */
  reject_alloc_fail: number;
  /** Stores that found the pool at its byte limit (zswap: pool_limit_hit). Without a tier they are refused; with one they go to the tier. */
  pool_limit_hit: number;
  /** Stores refused because the tier could not take them either: full or failing (zswap: reject_reclaim_fail). */
  reject_reclaim_fail: number;
  /** Loads that found an object that failed to decompress or to match its checksum. */
  decompress_fail: number;
  /** Objects written from RAM to the tier by the writer (zswap: written_back_pages). */
  written_back_pages: number;
  /** RAM copies dropped by the writer because the tier already held the object (no write). */
  evicted_clean_pages: number;
  /** New objects stored straight into the tier because the pool was full (above the accept threshold). */
  pool_bypass_pages: number;
  /** New objects also appended to the tier at store time (--writethrough). */
  writethrough_pages: number;
  /** Tier objects brought back into RAM by a load (kept in the tier too). */
  promoted_pages: number;
  /** Loads served by reading the tier's medium (not RAM or a write buffer). */
  disk_loads: number;
  /** Stores that had to wait for the tier's write buffers (async calls only). */
  store_waits: number;
  /** Stores that found their area at its pool quota (served from the area's own cold objects, the tier, or refused). */
  quota_limit_hit: number;
  /** Ephemeral pages held (entries of every ephemeral pool; createPool / put). */
  ephemeral_pages: number;
  /** put() calls, and puts not cached (no room in RAM even after dropping colder ephemeral pages, or a duplicate to confirm on the tier). */
  ephemeral_puts: number;
  ephemeral_put_rejected: number;
  /** get() calls that returned the page, and that missed. */
  ephemeral_hits: number;
  ephemeral_misses: number;
  /** Ephemeral pages dropped by the pressure policy (coldest first, before anything persistent is written back or refused). */
  ephemeral_evicted_pages: number;
  /** Ephemeral pages dropped by flush / flushObject / flushPool, by a rejected put over them, or by a get that found them unusable. */
  ephemeral_flushed_pages: number;
  /** Live objects with a copy in the tier. */
  disk_objects: number;
  /** Durable mode (0 otherwise): how long recovery took at start, the pages it brought back, the
   *  bytes of torn records it discarded at the end of the log, and the pages it could not (EIO). */
  recovery_seconds: number;
  recovered_pages: number;
  recovery_discarded_bytes: number;
  recovery_lost_pages: number;
  /** Durable mode: fdatasyncs (one per group of FLUSHes), journal records and checkpoints written. */
  disk_syncs: number;
  journal_records: number;
  checkpoints: number;
  /** Calls of store / load, loads that hit and missed, pages invalidated. */
  store_calls: number;
  load_calls: number;
  load_hits: number;
  load_misses: number;
  invalidated_pages: number;
  /** Stores that shared an existing object after a confirmed byte comparison. */
  dedup_hits: number;
  /** Fingerprint matches whose bytes differed (hash collisions caught by verify). */
  verify_mismatch: number;
  /** Objects moved by compaction (zram: pages_compacted). */
  pages_compacted: number;
  arenas: number;
  zspages: number;
  areas: number;
}
