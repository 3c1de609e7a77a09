/**
 * The analyze report: the one JSON document every output (terminal table, --json, --html) is
 * made from. Field names are part of the interface (docs/ANALYZE.md documents each one): add
 * fields, never rename or change the meaning of one. `format_version` changes if that ever must.
 *
 * Projections (bytes of memory the analysed pages would take), per codec:
 *   compression              every page compressed (zswap/zram without same-filled handling)
 *   compression_same_filled  same-filled pages cost 0, the others compressed (zswap/zram today)
 *   zdedup                   same-filled cost 0, each distinct content stored once, compressed,
 *                            plus the store's metadata; totals: one dedup domain for all sources
 *   zdedup_per_source        (totals only) one dedup domain per source, the store's default
 * Each: data_bytes (sum of stored sizes) + allocator_bytes (size-class rounding and zspage/arena
 * tails of the store's allocator, full zspages assumed) + metadata_bytes (zdedup only:
 * SLOT_METADATA_BYTES per page + OBJECT_METADATA_BYTES per stored object) = total_bytes.
 *
 * totals.cold (when the cold tier is projected, the default): the settled state of
 * `serve --codec lz4 --cold-codec zstd:LEVEL --cold-group N` with one dedup domain — distinct pages
 * lz4 shrinks are zstd-compressed N at a time in scan order (data_bytes = frames), the rest stay
 * hot and raw (with their allocator share); metadata adds COLD_OBJECT_METADATA_BYTES per object.
 */
import { hostname, release } from 'node:os';
import { readFileSync } from 'node:fs';
import { Analyzer, C, S, codecBase } from './analyzer.js';
import { PREVIEW_BYTES } from './tables.js';
import { SLOT_METADATA_BYTES, OBJECT_METADATA_BYTES } from '../core/page-store.js';
import { COLD_OBJECT_METADATA_BYTES } from '../core/cold.js';

// The store's own metadata costs, defined beside the structures they measure.
export { SLOT_METADATA_BYTES, OBJECT_METADATA_BYTES };

export const FORMAT_VERSION = 1;
const GIB = 2 ** 30;

export interface Projection {
  data_bytes: number;
  allocator_bytes: number;
  metadata_bytes: number;
  total_bytes: number;
  /** bytes - total_bytes (bytes = pages x page_size). */
  saved_bytes: number;
  saved_percent: number;
  /** Measured CPU seconds to process 1 GiB of these pages this way (totals only). */
  cpu_seconds_per_gib?: number;
}

/** The cold tier's projection (totals.cold). */
export interface ColdReport extends Projection {
  /** Codec of the group frames, pages per group, and the hot codec that decides what may go cold. */
  codec: string;
  group_pages: number;
  hot_codec: string;
  /** Distinct pages in groups, and distinct pages kept hot (lz4 cannot save 1/8: never tried with zstd). */
  grouped_pages: number;
  hot_pages: number;
  groups: number;
  /** Bytes of the zstd frames. */
  frame_bytes: number;
}

export interface CodecProjections {
  compression: Projection;
  compression_same_filled: Projection;
  zdedup: Projection;
  zdedup_per_source?: Projection;
}

export interface Skipped {
  swapped_pages: number;
  not_anonymous_pages: number;
  shared_frame_pages: number;
  zero_page_mappings: number;
  read_error_pages: number;
  header_pages: number;
  tail_bytes: number;
}

export interface Counts {
  pages: number;
  bytes: number;
  zero_pages: number;
  same_filled_pages: number;
  duplicate_pages: number;
  duplicate_pages_within_source: number;
  duplicate_pages_cross_source: number;
  unique_pages: number;
  index_full_pages: number;
  skipped: Skipped;
  /** Per codec: sum of stored sizes over every page, and pages (not same-filled) not saving 1/8. */
  compressed: Record<string, { bytes: number; incompressible_pages: number }>;
  projections: Record<string, CodecProjections>;
}

export interface MappingReport extends Counts {
  start: string;
  end: string;
  perms: string;
  name: string;
}

export interface SourceReport extends Counts {
  id: number;
  kind: 'process' | 'file' | 'block_device' | 'swap_image';
  name: string;
  pid: number | null;
  path: string | null;
  comm: string | null;
  cmdline: string | null;
  status: 'ok' | 'partial' | 'error';
  error: { code: string; message: string } | null;
  mappings?: MappingReport[];
}

export interface Report {
  format_version: number;
  generated_at: string;
  host: { hostname: string; kernel: string; root: boolean; kernel_page_size: number; mem_total_bytes: number };
  options: { page_size: number; codecs: string[]; index_memory_bytes: number; slot_metadata_bytes: number; object_metadata_bytes: number;
    /** The cold tier projected (null: --cold-codec off). */
    cold: { codec: string; group_pages: number; cold_object_metadata_bytes: number } | null };
  totals: Counts & {
    sources: number;
    sources_failed: number;
    sources_partial: number;
    distinct_contents: number;
    scan_seconds: number;
    /** The cold tier's projection (absent with --cold-codec off). */
    cold?: ColdReport;
  };
  cpu: {
    same_filled_check_ns_per_page: number;
    fingerprint_ns_per_page: number;
    compress_ns_per_page: Record<string, { unique: number; duplicate: number; same_filled: number }>;
  };
  sources: SourceReport[];
  top_sharing_pairs: { a: number; b: number; a_name: string; b_name: string; pages: number }[];
  top_duplicate_contents: {
    count: number; first_source: number; first_source_name: string;
    preview_offset: number; preview_hex: string; preview_ascii: string;
  }[];
  top_same_filled_words: { word: string; pages: number }[];
  skipped_sources: { kernel_threads: number; self: number };
}

function projection(bytes: number, data: number, alloc: number, meta: number): Projection {
  const total = alloc + meta; // alloc = allocated bytes (>= data)
  return {
    data_bytes: Math.round(data),
    allocator_bytes: Math.round(alloc - data),
    metadata_bytes: Math.round(meta),
    total_bytes: Math.round(total),
    saved_bytes: Math.round(bytes - total),
    saved_percent: bytes > 0 ? round2((100 * (bytes - total)) / bytes) : 0,
  };
}

function round2(x: number): number { return Math.round(x * 100) / 100; }

/** Counts and projections of one stats array. `perSourceDomain`: zdedup uses the source's own uniques. */
export function countsOf(an: Analyzer, s: Float64Array, perSourceDomain: boolean): Counts {
  const P = an.pageSize;
  const pages = s[S.PAGES]!;
  const bytes = pages * P;
  const compressed: Counts['compressed'] = {};
  const projections: Counts['projections'] = {};
  an.codecs.forEach((codec, k) => {
    const b = codecBase(k);
    compressed[codec.spec] = { bytes: s[b + C.ALL_DATA]!, incompressible_pages: s[b + C.INCOMPRESSIBLE]! };
    const uniq = perSourceDomain ? s[S.UNIQUE]! + s[S.DUP_CROSS]! : s[S.UNIQUE]!;
    const ud = perSourceDomain ? s[b + C.SRC_DATA]! : s[b + C.SCAN_DATA]!;
    const ua = perSourceDomain ? s[b + C.SRC_ALLOC]! : s[b + C.SCAN_ALLOC]!;
    projections[codec.spec] = {
      compression: projection(bytes, s[b + C.ALL_DATA]!, s[b + C.ALL_ALLOC]!, 0),
      compression_same_filled: projection(bytes, s[b + C.DATA_DATA]!, s[b + C.DATA_ALLOC]!, 0),
      zdedup: projection(bytes, ud, ua, SLOT_METADATA_BYTES * pages + OBJECT_METADATA_BYTES * uniq),
    };
  });
  return {
    pages,
    bytes,
    zero_pages: s[S.ZERO]!,
    same_filled_pages: s[S.SAME_FILLED]!,
    duplicate_pages: s[S.DUP_WITHIN]! + s[S.DUP_CROSS]!,
    duplicate_pages_within_source: s[S.DUP_WITHIN]!,
    duplicate_pages_cross_source: s[S.DUP_CROSS]!,
    unique_pages: s[S.UNIQUE]!,
    index_full_pages: s[S.INDEX_FULL]!,
    skipped: {
      swapped_pages: s[S.SWAPPED]!,
      not_anonymous_pages: s[S.NOT_ANON]!,
      shared_frame_pages: s[S.SHARED_FRAME]!,
      zero_page_mappings: s[S.ZERO_PAGE_MAPPING]!,
      read_error_pages: s[S.READ_ERROR]!,
      header_pages: s[S.HEADER]!,
      tail_bytes: s[S.TAIL_BYTES]!,
    },
    compressed,
    projections,
  };
}

export type SourceInfo = Omit<SourceReport, keyof Counts | 'id'> & { mappingStats?: { start: number; end: number; perms: string; name: string; stats: Float64Array | null }[] };

function hex(n: number): string { return '0x' + n.toString(16); }

function memTotal(): number {
  try {
    const m = /MemTotal:\s+(\d+)\s+kB/.exec(readFileSync('/proc/meminfo', 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch { return 0; }
}

export interface BuildInput {
  analyzer: Analyzer;
  sources: SourceInfo[];
  indexBytes: number;
  root: boolean;
  kernelPageSize: number;
  scanSeconds: number;
  skippedSources: { kernel_threads: number; self: number };
}

export function buildReport(inp: BuildInput): Report {
  const an = inp.analyzer;
  const P = an.pageSize;
  const total = an.newStats();
  for (const s of an.sourceStats) for (let f = 0; f < total.length; f++) total[f]! += s[f]!;
  const counts = countsOf(an, total, false);
  const pages = total[S.PAGES]!;
  const nonSf = pages - total[S.SAME_FILLED]!;
  const t = an.timing;
  const perGib = (ms: number): number => (counts.bytes > 0 ? round4(((ms / 1000) * GIB) / counts.bytes) : 0);

  // zdedup with one dedup domain per source: the sum over sources of per-source projections.
  an.codecs.forEach((codec, k) => {
    const nSf = total[S.SAME_FILLED]!;
    const tU = t[2 + 3 * k]!, tD = t[3 + 3 * k]!, tSfPage = t[4 + 3 * k]!;
    const pr = counts.projections[codec.spec]!;
    pr.compression.cpu_seconds_per_gib = perGib(tU + tD + nSf * tSfPage);
    pr.compression_same_filled.cpu_seconds_per_gib = perGib(t[0]! + tU + tD);
    pr.zdedup.cpu_seconds_per_gib = perGib(t[0]! + t[1]! + tU);
    let data = 0, alloc = 0, meta = 0;
    for (const s of an.sourceStats) {
      const one = countsOf(an, s, true).projections[codec.spec]!.zdedup;
      data += one.data_bytes; alloc += one.data_bytes + one.allocator_bytes; meta += one.metadata_bytes;
    }
    pr.zdedup_per_source = projection(counts.bytes, data, alloc, meta);
    // CPU: same as the shared domain but compressing each source's own first occurrences.
    const srcUnique = total[S.UNIQUE]! + total[S.DUP_CROSS]!;
    const perDupPage = total[S.DUP_WITHIN]! + total[S.DUP_CROSS]! > 0 ? tD / (total[S.DUP_WITHIN]! + total[S.DUP_CROSS]!) : 0;
    pr.zdedup_per_source.cpu_seconds_per_gib = perGib(t[0]! + t[1]! + tU + perDupPage * (srcUnique - total[S.UNIQUE]!));
  });

  const sources: SourceReport[] = inp.sources.map((info, id) => {
    const { mappingStats, ...rest } = info;
    const r: SourceReport = { id, ...rest, ...countsOf(an, an.sourceStats[id]!, true) };
    if (mappingStats) {
      r.mappings = mappingStats.filter((m) => m.stats).map((m) => ({
        start: hex(m.start), end: hex(m.end), perms: m.perms, name: m.name, ...countsOf(an, m.stats!, true),
      }));
    }
    return r;
  });
  const nameOf = (id: number): string => inp.sources[id]?.name ?? `source ${id}`;

  const top = an.top;
  const topContents = top.order().map((e) => {
    const bytes = top.preview.subarray(e * PREVIEW_BYTES, (e + 1) * PREVIEW_BYTES);
    return {
      count: top.count[e]!,
      first_source: top.firstSource[e]!,
      first_source_name: nameOf(top.firstSource[e]!),
      preview_offset: top.previewOffset[e]!,
      preview_hex: Buffer.from(bytes).toString('hex'),
      preview_ascii: Array.from(bytes, (c) => (c >= 0x20 && c < 0x7f ? String.fromCharCode(c) : '.')).join(''),
    };
  });
  const w = an.words;
  const topWords = w.top(10).map((c) => ({
    word: '0x' + w.hi[c]!.toString(16).padStart(8, '0') + w.lo[c]!.toString(16).padStart(8, '0'),
    pages: w.pages[c]!,
  }));

  const cpuCodecs: Report['cpu']['compress_ns_per_page'] = {};
  const dups = total[S.DUP_WITHIN]! + total[S.DUP_CROSS]!;
  an.codecs.forEach((codec, k) => {
    cpuCodecs[codec.spec] = {
      unique: total[S.UNIQUE]! > 0 ? Math.round((t[2 + 3 * k]! * 1e6) / total[S.UNIQUE]!) : 0,
      duplicate: dups > 0 ? Math.round((t[3 + 3 * k]! * 1e6) / dups) : 0,
      same_filled: Math.round(t[4 + 3 * k]! * 1e6),
    };
  });

  return {
    format_version: FORMAT_VERSION,
    generated_at: new Date().toISOString(),
    host: { hostname: hostname(), kernel: release(), root: inp.root, kernel_page_size: inp.kernelPageSize, mem_total_bytes: memTotal() },
    options: {
      page_size: P, codecs: an.codecs.map((c) => c.spec), index_memory_bytes: inp.indexBytes,
      slot_metadata_bytes: SLOT_METADATA_BYTES, object_metadata_bytes: OBJECT_METADATA_BYTES,
      cold: an.cold !== null ? { codec: `zstd:${an.cold.level}`, group_pages: an.cold.groupPages, cold_object_metadata_bytes: COLD_OBJECT_METADATA_BYTES } : null,
    },
    totals: {
      ...counts,
      sources: sources.length,
      sources_failed: sources.filter((s) => s.status === 'error').length,
      sources_partial: sources.filter((s) => s.status === 'partial').length,
      distinct_contents: an.index.size,
      scan_seconds: round4(inp.scanSeconds),
      ...(an.cold !== null ? { cold: coldReport(an, counts.bytes, pages, total[S.UNIQUE]!, perGib) } : {}),
    },
    cpu: {
      same_filled_check_ns_per_page: pages > 0 ? Math.round((t[0]! * 1e6) / pages) : 0,
      fingerprint_ns_per_page: nonSf > 0 ? Math.round((t[1]! * 1e6) / nonSf) : 0,
      compress_ns_per_page: cpuCodecs,
    },
    sources,
    top_sharing_pairs: an.pairs.top(10).map((p) => ({ a: p.a, b: p.b, a_name: nameOf(p.a), b_name: nameOf(p.b), pages: p.pages })),
    top_duplicate_contents: topContents,
    top_same_filled_words: topWords,
    skipped_sources: inp.skippedSources,
  };
}

/** totals.cold: frames + hot raw pages + metadata, against the scan's bytes. */
function coldReport(an: Analyzer, bytes: number, pages: number, distinct: number, perGib: (ms: number) => number): ColdReport {
  const c = an.cold!;
  const P = an.pageSize;
  const hotData = c.hotPages * P;
  const meta = SLOT_METADATA_BYTES * pages + OBJECT_METADATA_BYTES * distinct + COLD_OBJECT_METADATA_BYTES * c.groupedPages;
  const lz4 = an.codecs.findIndex((k) => k.spec === 'lz4');
  return {
    codec: `zstd:${c.level}`, group_pages: c.groupPages, hot_codec: 'lz4',
    grouped_pages: c.groupedPages, hot_pages: c.hotPages, groups: c.groups, frame_bytes: c.frameBytes,
    ...projection(bytes, c.frameBytes + hotData, c.frameBytes + c.hotAllocBytes, meta),
    // the store's path: same-filled check, fingerprint, lz4 of distinct pages, then the cold pass
    cpu_seconds_per_gib: perGib(an.timing[0]! + an.timing[1]! + (lz4 >= 0 ? an.timing[2 + 3 * lz4]! : 0) + c.ms),
  };
}

function round4(x: number): number { return Math.round(x * 1e4) / 1e4; }
