/**
 * The HTML report: one self-contained file (no script, font or style from the network), made
 * from the Report alone. Charts are inline SVG drawn here rather than a chart library inlined
 * into the page: two bar charts do not need one, SVG renders without running any script, and
 * every bar carries its number (data-value) so a test can check the picture against the JSON.
 * The full report is embedded as JSON (<script type="application/json" id="zdedup-report">).
 *
 *   header, totals table (data-field = JSON field)
 *   chart 1 "savings by technique": per codec, bytes for none / compression /
 *           compression + same-filled / zdedup / zdedup per source
 *   chart 2 "per-source breakdown": one stacked bar per source (largest first):
 *           zero | other same-filled | duplicate within | duplicate across | unique
 *   tables: sources, sharing pairs, most repeated contents (hex + ASCII), errors
 */
import type { Report, SourceReport } from './report.js';
import { TECHNIQUES, fmtBytes } from './render-text.js';

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

function pct(a: number, b: number): string { return b > 0 ? `${((100 * a) / b).toFixed(1)}%` : '-'; }

const PALETTE = { none: '#9aa5b1', compression: '#e0a458', compression_same_filled: '#d1734c', zdedup: '#2a9d8f', zdedup_per_source: '#4fb3a9' };
const PARTS: { key: string; label: string; color: string; of: (s: SourceReport) => number }[] = [
  { key: 'zero', label: 'zero', color: '#c9d1d9', of: (s) => s.zero_pages },
  { key: 'same_filled_other', label: 'other same-filled', color: '#8fa3b8', of: (s) => s.same_filled_pages - s.zero_pages },
  { key: 'duplicate_within', label: 'duplicate (same source)', color: '#e76f51', of: (s) => s.duplicate_pages_within_source },
  { key: 'duplicate_cross', label: 'duplicate (other source)', color: '#f4a261', of: (s) => s.duplicate_pages_cross_source },
  { key: 'unique', label: 'unique', color: '#264653', of: (s) => s.unique_pages },
];

function savingsChart(r: Report): string {
  const codecs = r.options.codecs;
  const bars: { codec: string; key: string; label: string; value: number; color: string }[] = [];
  for (const c of codecs) {
    bars.push({ codec: c, key: 'none', label: 'uncompressed', value: r.totals.bytes, color: PALETTE.none });
    for (const t of TECHNIQUES) bars.push({ codec: c, key: t.key, label: t.label, value: r.totals.projections[c]![t.key]!.total_bytes, color: PALETTE[t.key] });
  }
  const max = Math.max(1, ...bars.map((b) => b.value));
  const rowH = 22, labelW = 300, barW = 460, gap = 14;
  let y = 10;
  const parts: string[] = [];
  for (const c of codecs) {
    parts.push(`<text x="0" y="${y + 12}" class="group">${esc(c)}</text>`);
    y += 18;
    for (const b of bars.filter((x) => x.codec === c)) {
      const w = Math.max(1, (b.value / max) * barW);
      parts.push(`<text x="8" y="${y + 15}">${esc(b.label)}</text>` +
        `<rect class="bar" x="${labelW}" y="${y + 3}" width="${w.toFixed(1)}" height="${rowH - 6}" fill="${b.color}" data-codec="${esc(c)}" data-technique="${b.key}" data-value="${b.value}"><title>${esc(b.label)}: ${fmtBytes(b.value)}</title></rect>` +
        `<text x="${labelW + w + 6}" y="${y + 15}">${fmtBytes(b.value)}${b.key === 'none' ? '' : ` (${pct(r.totals.bytes - b.value, r.totals.bytes)} saved)`}</text>`);
      y += rowH;
    }
    y += gap;
  }
  return `<svg id="chart-savings" xmlns="http://www.w3.org/2000/svg" width="${labelW + barW + 170}" height="${y}" role="img" aria-label="Projected memory by technique">${parts.join('')}</svg>`;
}

function breakdownChart(sources: SourceReport[]): string {
  const rowH = 20, labelW = 260, barW = 520;
  const max = Math.max(1, ...sources.map((s) => s.pages));
  const parts: string[] = [];
  let y = 4;
  for (const s of sources) {
    parts.push(`<text x="0" y="${y + 14}">${esc(s.name.slice(0, 36))}</text>`);
    let x = labelW;
    for (const p of PARTS) {
      const v = p.of(s);
      const w = (v / max) * barW;
      parts.push(`<rect class="seg" x="${x.toFixed(2)}" y="${y + 3}" width="${w.toFixed(2)}" height="${rowH - 6}" fill="${p.color}" data-source="${s.id}" data-part="${p.key}" data-value="${v}"><title>${esc(s.name)}: ${esc(p.label)} ${v} pages</title></rect>`);
      x += w;
    }
    parts.push(`<text x="${x + 6}" y="${y + 14}">${fmtBytes(s.bytes)}</text>`);
    y += rowH;
  }
  let lx = 0;
  const legend = PARTS.map((p) => {
    const item = `<rect x="${lx}" y="${y + 8}" width="10" height="10" fill="${p.color}"/><text x="${lx + 14}" y="${y + 17}">${esc(p.label)}</text>`;
    lx += 24 + p.label.length * 7; // ~7 px per character at 12 px
    return item;
  }).join('');
  return `<svg id="chart-sources" xmlns="http://www.w3.org/2000/svg" width="${labelW + barW + 100}" height="${y + 28}" role="img" aria-label="Pages per source by kind">${parts.join('')}${legend}</svg>`;
}

export function renderHtml(r: Report, maxSources = 30): string {
  const t = r.totals;
  const codecs = r.options.codecs;
  const shown = r.sources.filter((s) => s.pages > 0).sort((a, b) => b.pages - a.pages).slice(0, maxSources);
  const cell = (field: string, v: number, text?: string): string => `<td data-field="${field}" data-value="${v}">${text ?? v.toLocaleString('en-US')}</td>`;
  const totalsRows = [
    ['pages', 'pages', t.pages],
    ['bytes', 'bytes', t.bytes],
    ['zero_pages', 'zero pages', t.zero_pages],
    ['same_filled_pages', 'same-filled pages (zero included)', t.same_filled_pages],
    ['duplicate_pages', 'duplicate pages', t.duplicate_pages],
    ['duplicate_pages_within_source', '&nbsp;&nbsp;within a source', t.duplicate_pages_within_source],
    ['duplicate_pages_cross_source', '&nbsp;&nbsp;across sources', t.duplicate_pages_cross_source],
    ['unique_pages', 'unique pages', t.unique_pages],
  ] as const;
  const projRows = TECHNIQUES.map((tq) => `<tr><th>${esc(tq.label)}</th>${codecs.map((c) => {
    const p = t.projections[c]![tq.key]!;
    return `<td data-field="projections.${esc(c)}.${tq.key}.total_bytes" data-value="${p.total_bytes}">${fmtBytes(p.total_bytes)}<br><span class="dim">${p.saved_percent.toFixed(1)}% saved · ${(p.cpu_seconds_per_gib ?? 0).toFixed(2)} CPU s/GiB</span></td>`;
  }).join('')}</tr>`).join('');
  const srcRows = shown.map((s) => `<tr data-source="${s.id}"><td>${esc(s.name)}</td><td>${s.kind}</td>${cell('pages', s.pages)}${cell('zero_pages', s.zero_pages)}${cell('same_filled_pages', s.same_filled_pages)}` +
    `${cell('duplicate_pages', s.duplicate_pages)}${cell('duplicate_pages_cross_source', s.duplicate_pages_cross_source)}` +
    `<td>${fmtBytes(s.projections[codecs[0]!]!.zdedup.total_bytes)} (${s.projections[codecs[0]!]!.zdedup.saved_percent.toFixed(1)}%)</td></tr>`).join('');
  const pairRows = r.top_sharing_pairs.map((p) => `<tr><td>${esc(p.a_name)}</td><td>${esc(p.b_name)}</td><td>${p.pages.toLocaleString('en-US')}</td></tr>`).join('');
  const contentRows = r.top_duplicate_contents.slice(0, 10).map((c) => `<tr><td>${c.count.toLocaleString('en-US')}</td><td>${esc(c.first_source_name)}</td><td>+${c.preview_offset}</td>` +
    `<td class="mono">${esc(c.preview_hex.replace(/(.{32})/g, '$1\n').replace(/(\S{2})(?=\S)/g, '$1 ').trim())}</td><td class="mono">${esc(c.preview_ascii.replace(/(.{16})/g, '$1\n').trim())}</td></tr>`).join('');
  const errRows = r.sources.filter((s) => s.error).map((s) => `<tr><td>${esc(s.name)}</td><td>${s.status}</td><td>${esc(s.error!.code)}</td><td>${esc(s.error!.message)}</td></tr>`).join('');
  const json = JSON.stringify(r).replace(/</g, '\\u003c');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>zdedup analyze: ${esc(r.host.hostname)}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1f2328;max-width:1100px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
table{border-collapse:collapse;margin:4px 0}td,th{padding:3px 10px;border-bottom:1px solid #e4e7eb;text-align:left;vertical-align:top}
td[data-value]{text-align:right}.dim{color:#6b7785;font-size:12px}.mono{font-family:ui-monospace,monospace;font-size:12px;white-space:pre}
svg text{font:12px system-ui,sans-serif;fill:#1f2328}svg text.group{font-weight:600}
</style></head><body>
<h1>zdedup analyze</h1>
<div class="dim">${esc(r.host.hostname)} · Linux ${esc(r.host.kernel)} · ${esc(r.generated_at)} · ${t.sources} source(s)${t.sources_failed ? `, ${t.sources_failed} failed` : ''} · page size ${r.options.page_size} B · scanned in ${t.scan_seconds.toFixed(1)} s${r.host.root ? '' : ' · not root'}</div>
<h2>Totals</h2>
<table id="totals">${totalsRows.map(([f, l, v]) => `<tr><th>${l}</th>${cell(f, v, f === 'bytes' ? fmtBytes(v) : undefined)}<td class="dim">${f === 'pages' || f === 'bytes' ? '' : pct(v, t.pages)}</td></tr>`).join('')}</table>
<h2>Projected memory by technique</h2>
<table id="projections"><tr><th></th>${codecs.map((c) => `<th>${esc(c)}</th>`).join('')}</tr>${projRows}</table>
<p class="dim">Allocator overhead (the store's size classes) included everywhere; zdedup also pays ${r.options.slot_metadata_bytes} B per page and ${r.options.object_metadata_bytes} B per stored object. CPU: measured on this scan.</p>
${savingsChart(r)}
<h2>Per-source breakdown${shown.length < r.sources.length ? ` (largest ${shown.length})` : ''}</h2>
${breakdownChart(shown)}
<table id="sources"><tr><th>source</th><th>kind</th><th>pages</th><th>zero</th><th>same-filled</th><th>duplicate</th><th>dup. across</th><th>zdedup (${esc(codecs[0]!)})</th></tr>${srcRows}</table>
${pairRows ? `<h2>Sources sharing the most</h2><p class="dim">Pages of B whose content first appeared in A.</p><table id="pairs"><tr><th>A</th><th>B</th><th>pages</th></tr>${pairRows}</table>` : ''}
${contentRows ? `<h2>Most repeated page contents</h2><p class="dim">64 bytes from the first non-zero byte (rounded down to 16).</p><table id="contents"><tr><th>pages</th><th>first seen in</th><th>offset</th><th>hex</th><th>ascii</th></tr>${contentRows}</table>` : ''}
${errRows ? `<h2>Sources with errors</h2><table id="errors"><tr><th>source</th><th>status</th><th>code</th><th>message</th></tr>${errRows}</table>` : ''}
<script type="application/json" id="zdedup-report">${json}</script>
</body></html>
`;
}
