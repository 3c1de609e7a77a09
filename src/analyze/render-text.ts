/**
 * The terminal report: totals, projected memory per technique and codec, CPU cost, the largest
 * sources, the pairs of sources sharing the most, the most repeated contents, and errors.
 * Made from the Report only, so it shows exactly what --json says.
 */
import type { Counts, Report } from './report.js';

export function fmtBytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0, v = n;
  while (Math.abs(v) >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return `${i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 2 : 1)} ${u[i]}`;
}

function pct(part: number, whole: number): string {
  return whole > 0 ? `${((100 * part) / whole).toFixed(1)}%` : '-';
}

function int(n: number): string { return Math.round(n).toLocaleString('en-US'); }

function table(rows: string[][], right: boolean[]): string {
  const w: number[] = [];
  for (const r of rows) r.forEach((c, i) => { w[i] = Math.max(w[i] ?? 0, c.length); });
  return rows.map((r) => '  ' + r.map((c, i) => (right[i] ? c.padStart(w[i]!) : c.padEnd(w[i]!))).join('  ').trimEnd()).join('\n');
}

export const TECHNIQUES: { key: 'compression' | 'compression_same_filled' | 'zdedup' | 'zdedup_per_source'; label: string }[] = [
  { key: 'compression', label: 'compression only (zswap/zram-like)' },
  { key: 'compression_same_filled', label: 'compression + same-filled' },
  { key: 'zdedup', label: 'zdedup: dedup + compression + same-filled' },
  { key: 'zdedup_per_source', label: 'zdedup, one dedup domain per source' },
];

function shareLine(c: Counts): string {
  return `zero ${pct(c.zero_pages, c.pages)}, same-filled ${pct(c.same_filled_pages, c.pages)}, ` +
    `duplicate ${pct(c.duplicate_pages, c.pages)} (within source ${pct(c.duplicate_pages_within_source, c.pages)}, ` +
    `across sources ${pct(c.duplicate_pages_cross_source, c.pages)}), unique ${pct(c.unique_pages, c.pages)}`;
}

export function renderText(r: Report, maxSources = 20): string {
  const out: string[] = [];
  const t = r.totals;
  const P = r.options.page_size;
  out.push(`zdedup analyze: ${t.sources} source(s)` +
    (t.sources_failed ? `, ${t.sources_failed} failed` : '') + (t.sources_partial ? `, ${t.sources_partial} partial` : '') +
    `, ${int(t.pages)} pages of ${P / 1024} KiB (${fmtBytes(t.bytes)}), scanned in ${t.scan_seconds.toFixed(1)} s`);
  if (!r.host.root && r.sources.some((s) => s.kind === 'process')) {
    out.push('note: not root: other users\' processes cannot be read, and pages shared by fork are counted in each process');
  }
  out.push('', 'Pages');
  out.push(`  ${shareLine(t)}`);
  const sk = t.skipped;
  const skippedParts = [
    [sk.swapped_pages, 'swapped out'], [sk.not_anonymous_pages, 'file/shmem'], [sk.shared_frame_pages, 'frames already counted'],
    [sk.zero_page_mappings, 'kernel zero page'], [sk.read_error_pages, 'unreadable'], [sk.header_pages, 'swap header'],
  ].filter(([n]) => (n as number) > 0).map(([n, l]) => `${int(n as number)} ${l}`);
  if (skippedParts.length) out.push(`  not analysed: ${skippedParts.join(', ')}`);
  if (t.index_full_pages > 0) out.push(`  warning: index full: ${int(t.index_full_pages)} pages counted unique without being remembered (duplicates undercounted; raise --index-memory)`);

  const codecs = r.options.codecs;
  out.push('', `Projected memory for ${fmtBytes(t.bytes)} (saved %), allocator overhead and zdedup metadata included`);
  const rows: string[][] = [['technique', ...codecs]];
  for (const tq of TECHNIQUES) {
    rows.push([tq.label, ...codecs.map((c) => {
      const p = r.totals.projections[c]![tq.key]!;
      return `${fmtBytes(p.total_bytes)} (${p.saved_percent.toFixed(1)}%)`;
    })]);
  }
  out.push(table(rows, [false, ...codecs.map(() => true)]));
  const cold = r.totals.cold;
  if (cold !== undefined) {
    out.push(`  cold tier (serve --codec lz4 --cold-codec ${cold.codec} --cold-group ${cold.group_pages}, settled, one dedup domain): ` +
      `${fmtBytes(cold.total_bytes)} (${cold.saved_percent.toFixed(1)}%), ${int(cold.grouped_pages)} pages in ${int(cold.groups)} groups, ` +
      `${int(cold.hot_pages)} kept hot; ${(cold.cpu_seconds_per_gib ?? 0).toFixed(3)} CPU s/GiB`);
  }
  out.push('', 'CPU seconds per GiB of pages (measured on this scan)');
  const cpu: string[][] = [['technique', ...codecs]];
  for (const tq of TECHNIQUES) {
    cpu.push([tq.label, ...codecs.map((c) => (r.totals.projections[c]![tq.key]!.cpu_seconds_per_gib ?? 0).toFixed(3))]);
  }
  out.push(table(cpu, [false, ...codecs.map(() => true)]));
  out.push(`  per page: same-filled check ${r.cpu.same_filled_check_ns_per_page} ns, fingerprint+index ${r.cpu.fingerprint_ns_per_page} ns, ` +
    codecs.map((c) => `${c} ${r.cpu.compress_ns_per_page[c]!.unique} ns`).join(', '));

  const ok = r.sources.filter((s) => s.pages > 0).sort((a, b) => b.pages - a.pages);
  if (ok.length > 0) {
    const c0 = codecs[0]!;
    out.push('', `Sources${ok.length > maxSources ? ` (largest ${maxSources} of ${ok.length})` : ''}; zdedup = ${c0}, per-source dedup domain`);
    const sr: string[][] = [['source', 'size', 'zero', 'same', 'dup-in', 'dup-x', `${c0} only`, 'zdedup', 'saved']];
    for (const s of ok.slice(0, maxSources)) {
      const z = s.projections[c0]!.zdedup;
      sr.push([s.name.slice(0, 40), fmtBytes(s.bytes), pct(s.zero_pages, s.pages), pct(s.same_filled_pages, s.pages),
        pct(s.duplicate_pages_within_source, s.pages), pct(s.duplicate_pages_cross_source, s.pages),
        fmtBytes(s.projections[c0]!.compression.total_bytes), fmtBytes(z.total_bytes), `${z.saved_percent.toFixed(1)}%`]);
    }
    out.push(table(sr, [false, true, true, true, true, true, true, true, true]));
  }

  if (r.top_sharing_pairs.length > 0) {
    out.push('', 'Sources sharing the most (pages of B whose content first appeared in A)');
    out.push(table([['A', 'B', 'pages', 'size'], ...r.top_sharing_pairs.map((p) => [p.a_name.slice(0, 36), p.b_name.slice(0, 36), int(p.pages), fmtBytes(p.pages * P)])],
      [false, false, true, true]));
  }
  if (r.top_duplicate_contents.length > 0) {
    out.push('', 'Most repeated page contents (not same-filled); preview of 32 bytes from the first non-zero byte');
    out.push(table([['pages', 'first seen in', 'offset', 'hex', 'ascii'], ...r.top_duplicate_contents.slice(0, 10).map((c) => [
      int(c.count), c.first_source_name.slice(0, 28), `+${c.preview_offset}`,
      c.preview_hex.slice(0, 64).replace(/(.{8})/g, '$1 ').trim(), c.preview_ascii.slice(0, 32)])],
    [true, false, true, false, false]));
  }
  if (r.top_same_filled_words.length > 0) {
    out.push('', 'Same-filled words: ' + r.top_same_filled_words.slice(0, 5).map((w) => `${w.word} x${int(w.pages)}`).join(', '));
  }
  const bad = r.sources.filter((s) => s.error);
  if (bad.length > 0) {
    out.push('', `Sources with errors (${bad.length})`);
    for (const s of bad.slice(0, 20)) out.push(`  ${s.name}: ${s.status} ${s.error!.code}: ${s.error!.message}`);
    if (bad.length > 20) out.push(`  ... and ${bad.length - 20} more (see --json)`);
  }
  if (r.skipped_sources.kernel_threads) out.push('', `(${r.skipped_sources.kernel_threads} kernel threads skipped: no user memory)`);
  return out.join('\n') + '\n';
}
