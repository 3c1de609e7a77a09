/**
 * What each number in /stats means: counter or gauge, its help text, its Prometheus name, and the
 * arithmetic every live view needs (rates between two snapshots, latency percentiles from the
 * NBD server's histograms). /metrics, the dashboard and `zdedup stats --watch` all read it, so a
 * stat is classified once and shown the same way everywhere (STYLE rule 4).
 *
 * Invariant: this module imports nothing. The server also hands its compiled file to the browser
 * as /assets/stat-model.js, where the dashboard imports it as an ES module.
 *
 * Store stats are treated generically: any numeric field of PageStore.stats() is shown, whether
 * or not this file knows it. Only the list of monotonic counters is explicit (a stat missing from
 * it is a gauge); help texts are given for the names known today and fall back to the name.
 */

// ---------------------------------------------------------------------------------------------
// Store stats
// ---------------------------------------------------------------------------------------------

export type StatKind = 'counter' | 'gauge';

/** Store stats that only ever increase while a server runs (Prometheus counters, `_total`). */
export const STORE_COUNTERS: ReadonlySet<string> = new Set([
  'store_calls', 'load_calls', 'load_hits', 'load_misses', 'invalidated_pages', 'dedup_hits',
  'verify_mismatch', 'pages_compacted', 'pool_limit_hit', 'reject_alloc_fail', 'decompress_fail',
  'written_back_pages', 'reject_reclaim_fail', 'cleaned_segments', 'disk_write_errors',
  'disk_read_errors', 'disk_loads', 'promoted_pages',
  // Counted events of the tiering work, named after the list above was written:
  'evicted_clean_pages', 'pool_bypass_pages', 'writethrough_pages', 'store_waits', 'disk_bytes_written',
  'disk_record_bytes_appended', 'disk_cleaner_bytes_moved', 'disk_reads', 'quota_limit_hit',
  // The remote tier (src/tiers/remote):
  'remote_stores', 'remote_loads', 'remote_dedup_hits', 'remote_errors', 'remote_retries', 'remote_lost_objects',
  'remote_bytes_sent', 'remote_bytes_received',
  // Ephemeral pools and cache exports:
  'ephemeral_puts', 'ephemeral_put_rejected', 'ephemeral_hits', 'ephemeral_misses', 'ephemeral_evicted_pages',
  'ephemeral_flushed_pages',
  // The cold tier (src/core/cold.ts):
  'cold_loads', 'cold_group_decompressions', 'cold_groups_written', 'cold_skipped_pages', 'cold_promoted_pages',
  'cold_written_back_pages', 'cold_cleaned_segments',
  // Durable mode (--persist):
  'disk_syncs', 'journal_records', 'checkpoints',
]);

/** One line per known stat: what it counts (Prometheus HELP, dashboard tooltips). */
export const STORE_HELP: Readonly<Record<string, string>> = {
  page_size: 'Store page size in bytes',
  stored_pages: 'Live slots holding a page, same-filled included (zswap stored_pages)',
  same_filled_pages: 'Live slots whose page is one 8-byte word repeated, zero pages included',
  zero_pages: 'Live slots holding the zero page (a subset of same_filled_pages)',
  duplicate_pages: 'Live slots served by an object stored for another slot',
  unique_objects: 'Live compressed (or raw) objects in the pool',
  stored_incompressible_pages: 'Live objects kept raw because compression would not save 1/8 of a page',
  pool_total_size: 'Bytes of arenas the RAM pool holds (zswap pool_total_size)',
  logical_bytes: 'Bytes of pages stored (stored_pages x page_size)',
  compressed_bytes: 'Sum of the stored lengths of live objects, before size-class rounding',
  metadata_bytes: 'Bytes of per-page and per-object metadata (typed arrays, tables, arena bookkeeping); slot maps count only the 4 KiB blocks ever written',
  slot_map_reserved_bytes: 'Bytes reserved for slot maps (4 per slot, written or not); the kernel backs only written blocks',
  compression_ratio: 'unique_objects x page_size / compressed_bytes (1 when empty)',
  dedup_ratio: '(stored_pages - same_filled_pages) / unique_objects (1 when empty)',
  effective_ratio: 'logical_bytes / (pool_total_size + cold_bytes + stage_bytes + metadata_bytes)',
  reject_alloc_fail: 'Stores refused because the allocator could not place the object',
  pool_limit_hit: 'Stores that found the RAM pool at its byte limit (zswap pool_limit_hit)',
  decompress_fail: 'Loads that found an object failing to decompress or to match its checksum',
  written_back_pages: 'Objects written back from the RAM pool to a lower tier',
  store_calls: 'Calls of store',
  load_calls: 'Calls of load',
  load_hits: 'Loads that found a page',
  load_misses: 'Loads that found a hole',
  invalidated_pages: 'Pages invalidated (discard, trim, overwrite by a hole)',
  dedup_hits: 'Stores that shared an existing object after a confirmed byte comparison',
  verify_mismatch: 'Fingerprint matches whose bytes differed (hash collisions caught by verify)',
  pages_compacted: 'Objects moved by compaction (zram pages_compacted)',
  cold_objects: 'Live objects held in cold groups (zstd frames of several pages in RAM segments)',
  cold_bytes: 'Bytes of cold group frames in RAM segments, live and garbage',
  cold_pending_pages: 'Compressible RAM objects waiting to go cold (idle time or their pass); 0 when settled',
  cold_loads: 'Loads served from a cold group',
  cold_group_decompressions: 'Cold group frames decompressed for loads and dedup checks',
  cold_groups_written: 'Cold groups written by the cold pass',
  cold_skipped_pages: 'Objects left hot because zstd of their group did not beat their own compressed bytes',
  cold_promoted_pages: 'Cold objects brought back into the RAM pool by a second load',
  cold_written_back_pages: 'Cold objects written back to the disk tier',
  cold_cleaned_segments: 'Cold segments freed by the cold cleaner',
  cold_segments: 'Cold segments held in RAM',
  stage_pages: 'New pages waiting in the compression stage for a worker thread (--compress-threads); 0 when caught up',
  stage_bytes: 'Bytes of shared memory of the compression stage (raw pages and outputs; fixed, 0 when off)',
  arenas: 'Live 1 MiB arenas in the RAM pool',
  zspages: 'Live zspages in the RAM pool',
  areas: 'Areas (exports) defined in the store',
  max_pool_bytes: 'Byte limit of the RAM pool (0 = unbounded)',
  reject_reclaim_fail: 'Stores refused because neither the RAM pool nor the disk tier could take them (tier full or failing)',
  disk_bytes: 'Bytes of the backing occupied by segments in use (headers and records, live or not)',
  disk_live_bytes: 'Bytes of live records in the disk tier',
  disk_segments: 'Segments of the backing in use (sealed, being written or being filled)',
  cleaned_segments: 'Disk segments cleaned (live records moved, segment freed)',
  disk_write_errors: 'Disk tier writes that failed',
  disk_read_errors: 'Disk tier reads that failed their read, checksum or fingerprint',
  disk_loads: 'Loads served from the disk tier',
  promoted_pages: 'Objects brought back from a lower tier into the RAM pool',
  backing_size: 'Size in bytes of the disk tier backing file or device',
  ram_objects: 'Objects held in the RAM pool',
  ram_compressed_bytes: 'Sum of the stored lengths of the objects held in the RAM pool',
  evicted_clean_pages: 'RAM copies dropped because the lower tier already held the object (no write)',
  pool_bypass_pages: 'New objects stored straight into the lower tier because the RAM pool was full',
  writethrough_pages: 'New objects also appended to the lower tier at store time (writethrough)',
  store_waits: 'Stores that waited for the lower tier\'s write buffers',
  disk_objects: 'Live objects with a copy in the disk tier',
  disk_free_segments: 'Free segments in the disk tier',
  disk_bytes_written: 'Bytes written to the disk tier backing (segments, aligned)',
  disk_record_bytes_appended: 'Bytes of records appended for new data (writeback, writethrough, bypass)',
  disk_cleaner_bytes_moved: 'Bytes of live records the cleaner copied forward',
  quota_limit_hit: 'Stores that found their export at its pool quota (--export NAME:SIZE:max-pool=SIZE)',
  disk_reads: 'Reads issued to the disk tier backing (loads and cold duplicate checks)',
  remote_objects: 'Objects of this host located in the remote tier (acknowledged or still in a write buffer)',
  remote_bytes: 'Stored bytes of the objects of this host located in the remote tier',
  remote_stores: 'Values uploaded to the Redis Cluster (content not there yet)',
  remote_loads: 'Loads served by the Redis Cluster (remote hits)',
  remote_dedup_hits: 'Objects whose content the cluster already held (another host of the domain stored it): upload skipped',
  remote_errors: 'Failed remote operations: unacknowledged batches (WAIT), unreachable or bad reads, lost keys',
  remote_retries: 'Remote batches and reads tried again after a failure',
  remote_lost_objects: 'Objects the cluster no longer had when read or renewed (their loads are EIO)',
  remote_bytes_sent: 'Bytes of keys and values sent to the Redis Cluster',
  remote_bytes_received: 'Bytes of values received from the Redis Cluster',
  remote_hit_latency_p50_us: 'Median latency of remote hits over the last 4096, microseconds',
  remote_hit_latency_p99_us: '99th percentile latency of remote hits over the last 4096, microseconds',
  ephemeral_pages: 'Ephemeral pages held (clean cached pages: cache exports, ephemeral pools)',
  ephemeral_puts: 'Pages put into ephemeral pools',
  ephemeral_put_rejected: 'Ephemeral puts not cached (no room in RAM even after dropping colder ephemeral pages)',
  ephemeral_hits: 'Ephemeral gets that returned the cached page',
  ephemeral_misses: 'Ephemeral gets that missed (never cached, dropped, or flushed)',
  ephemeral_evicted_pages: 'Ephemeral pages dropped under pressure, coldest first, before anything persistent is written back or refused',
  ephemeral_flushed_pages: 'Ephemeral pages dropped by a flush, a rejected put over them, or a write',
  write_amplification: 'Bytes written to the backing per byte of new data in written segments (cleaning, headers and alignment make it > 1)',
  recovery_seconds: 'Durable mode: seconds recovery took at start (scan of the log, replay of the journal)',
  recovered_pages: 'Durable mode: pages recovery brought back at start',
  recovery_discarded_bytes: 'Durable mode: bytes of torn records recovery discarded at the end of the log (writes under way at the crash)',
  recovery_lost_pages: 'Durable mode: pages whose record recovery found damaged or missing (they read as EIO)',
  disk_syncs: 'Durable mode: fdatasyncs of the backing (one per group of concurrent FLUSHes)',
  journal_records: 'Durable mode: journal records of slot updates appended to the log',
  checkpoints: 'Durable mode: checkpoints of the slot maps written to the log',
};

export function storeStatKind(name: string): StatKind {
  return STORE_COUNTERS.has(name) ? 'counter' : 'gauge';
}

/** Sizes: names ending in _bytes or _size (page_size and backing_size included). */
export function isByteStat(name: string): boolean {
  return name.endsWith('_bytes') || name.endsWith('_size');
}

/**
 * The Prometheus name of a store stat: counters get `_total`, sizes end in `_bytes` (a `_size`
 * stat such as pool_total_size becomes zdedup_pool_total_size_bytes), other gauges keep their name.
 */
export function promStoreName(name: string): string {
  if (STORE_COUNTERS.has(name)) return `zdedup_${name}_total`;
  if (name.endsWith('_size')) return `zdedup_${name}_bytes`;
  return `zdedup_${name}`;
}

export function storeHelp(name: string): string {
  return STORE_HELP[name] ?? `PageStore stat ${name}`;
}

/** Valid as part of a Prometheus metric name (and a stat we render). */
export function isPlainName(name: string): boolean {
  return /^[a-z_][a-z0-9_]*$/.test(name);
}

/** Stats that count errors or refusals: the dashboard's error panel, the watch view's error line. */
export const ERROR_STATS: readonly string[] = [
  'decompress_fail', 'verify_mismatch', 'reject_alloc_fail', 'pool_limit_hit', 'reject_reclaim_fail',
  'disk_write_errors', 'disk_read_errors', 'remote_errors', 'remote_lost_objects',
];

/** Stats that show background work moving data between or inside tiers. */
export const ACTIVITY_STATS: readonly string[] = [
  'written_back_pages', 'promoted_pages', 'disk_loads', 'cleaned_segments', 'pages_compacted',
  'evicted_clean_pages', 'pool_bypass_pages', 'remote_stores', 'remote_loads', 'remote_dedup_hits',
];

/**
 * Memory by tier, in the order drawn: [stat, label]. Only those present are drawn; any other
 * `remote_*_bytes` / `cold_*_bytes` stat joins them (see memoryStats).
 */
export const MEMORY_STATS: readonly (readonly [string, string])[] = [
  ['pool_total_size', 'RAM pool'],
  ['max_pool_bytes', 'RAM pool limit'],
  ['compressed_bytes', 'compressed data'],
  ['ram_compressed_bytes', 'compressed data in RAM'],
  ['metadata_bytes', 'metadata'],
  ['disk_bytes', 'disk tier'],
  ['disk_live_bytes', 'disk tier, live'],
];

/**
 * Whether a disk tier is configured: backing_size > 0 when the store reports it, else any disk_
 * stat at all. Without one the disk_* stats (all zero) and cleaned_segments are left out of the
 * live views, not out of /stats or /metrics.
 */
export function hasDiskTier(store: Record<string, unknown>): boolean {
  if (typeof store.backing_size === 'number') return store.backing_size > 0;
  return Object.keys(store).some((k) => k.startsWith('disk_'));
}

/** `names` without the disk tier's stats when there is no disk tier. */
export function withoutAbsentTier(names: readonly string[], store: Record<string, unknown>): string[] {
  // the remote tier's names show once it has done anything (its counters are 0 without one)
  const remote = ['remote_objects', 'remote_stores', 'remote_dedup_hits', 'remote_errors'].some((k) => typeof store[k] === 'number' && (store[k] as number) > 0);
  const kept = remote ? names : names.filter((k) => !k.startsWith('remote_'));
  if (hasDiskTier(store)) return [...kept];
  return kept.filter((k) => !k.startsWith('disk_') && k !== 'cleaned_segments');
}

/** The memory stats present in a store snapshot, tier stats of later tiers included. */
export function memoryStats(store: Record<string, unknown>): [string, string][] {
  const out: [string, string][] = [];
  const disk = hasDiskTier(store);
  for (const [k, label] of MEMORY_STATS) {
    if (typeof store[k] !== 'number' || (k === 'max_pool_bytes' && store[k] === 0)) continue;
    if (k.startsWith('disk_') && !disk) continue;
    out.push([k, label]);
  }
  for (const k of Object.keys(store).sort()) {
    if (/^(remote|cold)_.*bytes$/.test(k) && typeof store[k] === 'number') out.push([k, k.replace(/_/g, ' ')]);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// NBD server counters (NbdCounters.toJSON())
// ---------------------------------------------------------------------------------------------

/** NBD scalars that go up and down; every other numeric NBD field is a counter. */
export const NBD_GAUGES: ReadonlySet<string> = new Set(['connections_active', 'buffered_bytes']);

/** NBD scalars shown through a labelled family instead (requests by command, errors by errno). */
export const NBD_LABELLED_TOTALS: ReadonlySet<string> = new Set(['requests_total', 'request_errors_total']);

export const NBD_HELP: Readonly<Record<string, string>> = {
  connections_accepted: 'NBD connections accepted',
  connections_active: 'NBD connections open now',
  handshakes_completed: 'NBD connections that entered transmission',
  handshake_aborted: 'NBD connections that ended during the option phase',
  options_refused: 'NBD options answered with an error reply',
  protocol_errors: 'NBD hard disconnects for protocol violations',
  disconnect_mid_request: 'NBD clients gone with a request partly sent',
  bytes_read: 'Payload bytes returned by NBD READ',
  bytes_written: 'Payload bytes accepted by NBD WRITE',
  connections_refused_limit: 'NBD connections closed at accept: --max-connections reached',
  handshake_evicted: 'NBD connections still negotiating closed to make room at --max-connections',
  handshake_timeouts: 'NBD connections closed for missing the handshake deadline',
  idle_timeouts: 'NBD connections closed with a partial request or unread replies and no progress',
  buffered_bytes: 'Bytes of NBD request payloads and READ replies held now (global buffer budget)',
  buffer_waits: 'NBD requests that waited for the global buffer budget',
  tls_handshakes: 'NBD TLS sessions established after STARTTLS',
  tls_handshake_failed: 'NBD TLS handshakes that failed after STARTTLS',
  tls_refused: 'NBD options refused with ERR_TLS_REQD (plaintext while TLS is required)',
};

/** zdedup_nbd_<name>_total for counters (no doubled suffix), zdedup_nbd_<name> for gauges. */
export function promNbdName(name: string): string {
  if (NBD_GAUGES.has(name)) return `zdedup_nbd_${name}`;
  return name.endsWith('_total') ? `zdedup_nbd_${name}` : `zdedup_nbd_${name}_total`;
}

export function nbdHelp(name: string): string {
  return NBD_HELP[name] ?? `NBD server counter ${name}`;
}

// ---------------------------------------------------------------------------------------------
// Latency histograms
// ---------------------------------------------------------------------------------------------

/**
 * One histogram as the NBD server reports it: `buckets` are upper bounds in seconds, ascending;
 * `counts` are per bucket (not cumulative), with one more entry than `buckets` for requests slower
 * than the last bound. A missing last entry is derived from `count`.
 */
export interface LatencyJson {
  buckets: number[];
  counts: number[];
  sum_seconds: number;
  count: number;
}

/** Request kinds the server times, in display order. */
export const LATENCY_KINDS: readonly string[] = ['read_ram', 'read_tier', 'write', 'other'];

export const LATENCY_LABELS: Readonly<Record<string, string>> = {
  read_ram: 'read (RAM)', read_tier: 'read (lower tier)', write: 'write', other: 'other',
};

export function isLatencyJson(v: unknown): v is LatencyJson {
  if (v === null || typeof v !== 'object') return false;
  const h = v as Partial<LatencyJson>;
  return Array.isArray(h.buckets) && Array.isArray(h.counts) && typeof h.count === 'number' &&
    typeof h.sum_seconds === 'number' && h.counts.length >= h.buckets.length;
}

/** The latency histograms of an /stats `nbd` object, by kind (empty when the server has none). */
export function latencyOf(nbd: Record<string, unknown> | undefined): Record<string, LatencyJson> {
  const out: Record<string, LatencyJson> = {};
  const l = nbd?.latency;
  if (l === null || typeof l !== 'object') return out;
  for (const [k, v] of Object.entries(l as Record<string, unknown>)) if (isLatencyJson(v)) out[k] = v;
  return out;
}

/**
 * Cumulative counts for bounds `le` (the last entry is +Inf and equals `count`): the shape of a
 * Prometheus histogram's _bucket series.
 */
export function cumulative(h: LatencyJson): { le: number[]; cum: number[] } {
  const le = [...h.buckets, Infinity];
  const cum: number[] = [];
  let run = 0;
  for (let i = 0; i < h.buckets.length; i++) {
    run += h.counts[i] ?? 0;
    cum.push(run);
  }
  cum.push(Math.max(run, h.count));
  return { le, cum };
}

/** The requests recorded between two snapshots of one histogram (`now` alone if prev is absent). */
export function latencyDelta(now: LatencyJson, prev: LatencyJson | undefined): LatencyJson {
  if (prev === undefined || prev.buckets.length !== now.buckets.length || prev.count > now.count) return now;
  return {
    buckets: now.buckets,
    counts: now.counts.map((c, i) => c - (prev.counts[i] ?? 0)),
    sum_seconds: now.sum_seconds - prev.sum_seconds,
    count: now.count - prev.count,
  };
}

/**
 * The q-quantile (0..1) in seconds, interpolated linearly inside its bucket as Prometheus'
 * histogram_quantile does; null when the histogram is empty. A quantile in the +Inf bucket is
 * reported as the last finite bound (all we know is "slower than that").
 */
export function latencyQuantile(h: LatencyJson, q: number): number | null {
  const { le, cum } = cumulative(h);
  const total = cum[cum.length - 1]!;
  if (!(total > 0)) return null;
  const rank = q * total;
  for (let i = 0; i < le.length; i++) {
    if (cum[i]! >= rank) {
      if (le[i] === Infinity) return le.length > 1 ? le[le.length - 2]! : null;
      const lower = i === 0 ? 0 : le[i - 1]!;
      const below = i === 0 ? 0 : cum[i - 1]!;
      const inBucket = cum[i]! - below;
      return inBucket > 0 ? lower + (le[i]! - lower) * ((rank - below) / inBucket) : le[i]!;
    }
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// Rates and formatting
// ---------------------------------------------------------------------------------------------

/** Per-second rate of a counter between two readings; null without a usable earlier reading. */
export function ratePerSecond(now: number | undefined, prev: number | undefined, seconds: number): number | null {
  if (typeof now !== 'number' || typeof prev !== 'number' || !(seconds > 0) || now < prev) return null;
  return (now - prev) / seconds;
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = Math.abs(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  const s = i === 0 ? String(Math.round(v)) : v.toFixed(v < 10 ? 2 : 1);
  return `${n < 0 ? '-' : ''}${s} ${units[i]}`;
}

/** Seconds as µs / ms / s with three significant digits. */
export function formatSeconds(s: number | null): string {
  if (s === null) return '-';
  if (s < 1e-3) return `${(s * 1e6).toPrecision(3)} µs`;
  if (s < 1) return `${(s * 1e3).toPrecision(3)} ms`;
  return `${s.toPrecision(3)} s`;
}

/** A rate with k/M/G suffixes (decimal, as rates usually are). */
export function formatRate(v: number | null, unit = '/s'): string {
  if (v === null) return '-';
  const a = Math.abs(v);
  const [d, suffix] = a >= 1e9 ? [1e9, 'G'] : a >= 1e6 ? [1e6, 'M'] : a >= 1e3 ? [1e3, 'k'] : [1, ''];
  const x = v / d;
  return `${x.toFixed(Math.abs(x) >= 100 || d === 1 && Number.isInteger(x) ? 0 : 1)}${suffix}${unit}`;
}
