/**
 * The store's statistics: one structure, one name per outcome, shown under the same names
 * everywhere (CLI, /stats JSON, Prometheus as zdedup_<name>). Names follow kernel zswap's
 * debugfs where they apply.
 */

export interface PageStoreStats {
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
  /** stored_pages * page_size. */
  logical_bytes: number;
  /** Sum of the stored lengths of live objects (before size-class rounding). */
  compressed_bytes: number;
  /** Bytes of per-page and per-object metadata (typed arrays, tables, arena bookkeeping). */
  metadata_bytes: number;
  /** unique_objects * page_size / compressed_bytes (1 when empty). */
  compression_ratio: number;
  /** (stored_pages - same_filled_pages) / unique_objects (1 when empty). */
  dedup_ratio: number;
  /** logical_bytes / (pool_total_size + metadata_bytes). */
  effective_ratio: number;
  /** Stores refused because the allocator could not place the object (id space exhausted). */
  reject_alloc_fail: number;
  /** Stores refused because the pool is at its byte limit (zswap: pool_limit_hit). */
  pool_limit_hit: number;
  /** Loads that found an object that failed to decompress or to match its checksum. */
  decompress_fail: number;
  /** Objects written to a lower tier (no tier yet: always 0). */
  written_back_pages: number;
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
