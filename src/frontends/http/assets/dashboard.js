// The zdedup dashboard's script (an ES module served as /assets/dashboard.js).
//
// Listens to /events (one /stats document a second, plus time_ms), keeps the last HISTORY frames,
// and draws them with uPlot (loaded before this module as the global `uPlot`). Everything a stat
// means (counter or gauge, help text, latency percentiles) comes from /assets/stat-model.js, the
// same module /metrics and `zdedup stats --watch` use. Stats are rendered generically: a stat the
// server starts reporting later (a tier switched on) appears in the tables and its chart gains a
// series (the chart is rebuilt with the history it already has).
//
// For tests and the curious, window.zdedupDashboard exposes { frames, last, charts } where
// charts[name] = { series: [labels], points: number } and data(name) = [times, ...series].
import * as M from '/assets/stat-model.js';

const HISTORY = 600;            // frames kept (10 minutes at one a second)
const LATENCY_WINDOW = 5;       // percentiles over the requests of the last 5 frames
const COLORS = ['#2a9d8f', '#e76f51', '#264653', '#e9c46a', '#8e7dbe', '#f4a261', '#1d7874', '#9b2226', '#577590', '#6a994e'];

const state = {
  frames: 0,
  last: null,
  times: [],            // seconds (uPlot's x)
  docs: [],             // the frames themselves (for latency windows)
  cols: new Map(),      // series key -> values aligned with times
  charts: {},           // name -> { plot, keys, labels }
};
window.zdedupDashboard = {
  get frames() { return state.frames; },
  get last() { return state.last; },
  charts: {},
  /** A chart's data as uPlot holds it: [times, ...one array per series]. */
  data: (name) => (state.charts[name] ? dataFor(state.charts[name].keys) : null),
};

// ---- series: what each chart draws, computed from a frame and the one before it -------------

const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);

/** Series for one frame: [chart, key, label, value]. */
function seriesOf(doc, prev) {
  const s = doc.store ?? {};
  const n = doc.nbd ?? {};
  const ps = prev?.store ?? {};
  const pn = prev?.nbd ?? {};
  const dt = prev ? (doc.time_ms - prev.time_ms) / 1000 : 0;
  const rate = (a, b) => M.ratePerSecond(a, b, dt);
  const out = [];
  const add = (chart, key, label, v) => out.push([chart, `${chart}.${key}`, label, num(v)]);

  add('ratios', 'effective', 'effective', s.effective_ratio);
  add('ratios', 'compression', 'compression', s.compression_ratio);
  add('ratios', 'dedup', 'dedup', s.dedup_ratio);

  add('pages', 'zero', 'zero', s.zero_pages);
  add('pages', 'same', 'same-filled (not zero)', s.same_filled_pages - s.zero_pages);
  add('pages', 'duplicate', 'duplicate', s.duplicate_pages);
  add('pages', 'unique', 'unique', s.stored_pages - s.same_filled_pages - s.duplicate_pages);

  for (const [k, label] of M.memoryStats(s)) add('memory', k, label, s[k]);
  add('memory', 'rss', 'process RSS', doc.process?.rss_bytes);

  add('throughput', 'read', 'read', rate(n.bytes_read, pn.bytes_read));
  add('throughput', 'written', 'written', rate(n.bytes_written, pn.bytes_written));

  for (const [cmd, v] of Object.entries(n.requests ?? {})) {
    if (v > 0) add('requests', `nbd_${cmd}`, `NBD ${cmd}`, rate(v, pn.requests?.[cmd] ?? 0));
  }
  add('requests', 'store_calls', 'store calls', rate(s.store_calls, ps.store_calls));
  add('requests', 'load_calls', 'load calls', rate(s.load_calls, ps.load_calls));

  const lat = M.latencyOf(n);
  const base = state.docs.length >= LATENCY_WINDOW ? state.docs[state.docs.length - LATENCY_WINDOW] : state.docs[0];
  const baseLat = M.latencyOf(base?.nbd);
  for (const kind of M.LATENCY_KINDS.filter((k) => lat[k]).concat(Object.keys(lat).filter((k) => !M.LATENCY_KINDS.includes(k)))) {
    if (lat[kind].count === 0) continue;
    const d = M.latencyDelta(lat[kind], baseLat[kind]);
    const label = M.LATENCY_LABELS[kind] ?? kind;
    add('latency', `${kind}.p50`, `${label} p50`, M.latencyQuantile(d, 0.5));
    add('latency', `${kind}.p99`, `${label} p99`, M.latencyQuantile(d, 0.99));
  }

  for (const k of M.withoutAbsentTier(M.ACTIVITY_STATS, s)) if (k in s) add('activity', k, k.replace(/_/g, ' '), rate(s[k], ps[k]));
  for (const k of M.withoutAbsentTier(M.ERROR_STATS, s)) if (k in s) add('errors', k, k.replace(/_/g, ' '), rate(s[k], ps[k]));
  add('errors', 'nbd_errors', 'NBD error replies', rate(n.request_errors_total, pn.request_errors_total));
  add('errors', 'nbd_protocol', 'NBD protocol errors', rate(n.protocol_errors, pn.protocol_errors));
  return out;
}

const CHART_UNITS = {
  ratios: 'ratio', pages: 'count', memory: 'bytes', throughput: 'bytes/s', requests: 'rate',
  latency: 'seconds', activity: 'rate', errors: 'rate',
};

/** The least top of a chart's y axis, so an idle chart shows a sensible scale instead of 0..1e-9. */
const Y_FLOOR = { ratio: 1, count: 1, bytes: 1024, 'bytes/s': 1024, rate: 1, seconds: 1e-4 };

function fmt(unit, v) {
  if (v === null || v === undefined) return '-';
  switch (unit) {
    case 'ratio': return v.toFixed(2);
    case 'bytes': return M.formatBytes(v);
    case 'bytes/s': return `${M.formatBytes(v)}/s`;
    case 'rate': return M.formatRate(v);
    case 'seconds': return M.formatSeconds(v);
    default: return Math.round(v).toLocaleString('en');
  }
}

// ---- charts ----------------------------------------------------------------------------------

function chartWidth(el) {
  return Math.max(300, el.clientWidth || el.parentElement.clientWidth - 20);
}

function buildChart(name, keys, labels) {
  const el = document.getElementById(`chart-${name}`);
  const old = state.charts[name];
  if (old) old.plot.destroy();
  const unit = CHART_UNITS[name];
  const opts = {
    width: chartWidth(el),
    height: 220,
    series: [
      { label: 'time', value: (u, v) => (v === null ? '-' : new Date(v * 1000).toLocaleTimeString()) },
      ...labels.map((label, i) => ({
        label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: false,
        value: (u, v) => fmt(unit, v),
      })),
    ],
    axes: [{}, { size: 86, values: (u, ticks) => ticks.map((v) => fmt(unit, v)) }],
    scales: { x: { time: true }, y: { range: (u, min, max) => [Math.min(0, min ?? 0), Math.max(max ?? 0, Y_FLOOR[unit] ?? 1) * 1.05] } },
    legend: { live: true },
  };
  const plot = new uPlot(opts, dataFor(keys), el);
  state.charts[name] = { plot, keys, labels };
}

function dataFor(keys) {
  return [state.times, ...keys.map((k) => state.cols.get(k))];
}

function redraw(current) {
  const byChart = new Map();
  for (const [chart, key, label] of current) {
    if (!byChart.has(chart)) byChart.set(chart, { keys: [], labels: [] });
    byChart.get(chart).keys.push(key);
    byChart.get(chart).labels.push(label);
  }
  for (const name of Object.keys(CHART_UNITS)) {
    const want = byChart.get(name) ?? { keys: [], labels: [] };
    const have = state.charts[name];
    if (!have || have.keys.join('|') !== want.keys.join('|')) buildChart(name, want.keys, want.labels);
    else have.plot.setData(dataFor(have.keys));
    // Outside a hover, the legend shows the newest values.
    const plot = state.charts[name].plot;
    if (!(plot.cursor.left >= 0) && state.times.length > 0) plot.setLegend({ idx: state.times.length - 1 });
    window.zdedupDashboard.charts[name] = { series: want.labels, points: state.times.length };
  }
}

window.addEventListener('resize', () => {
  for (const [name, c] of Object.entries(state.charts)) {
    c.plot.setSize({ width: chartWidth(document.getElementById(`chart-${name}`)), height: 220 });
  }
});

// ---- tables and cards ------------------------------------------------------------------------

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) if (v !== undefined) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function statText(k, v) {
  if (typeof v !== 'number') return String(v);
  if (k.endsWith('_ratio') || k === 'write_amplification') return v.toFixed(3);
  if (M.isByteStat(k)) return `${M.formatBytes(v)}`;
  return v.toLocaleString('en');
}

function renderCards(doc) {
  const s = doc.store ?? {};
  const cards = [
    ['effective_ratio', 'effective ratio'], ['compression_ratio', 'compression'], ['dedup_ratio', 'dedup'],
    ['stored_pages', 'stored pages'], ['logical_bytes', 'logical'], ['pool_total_size', 'RAM pool'],
  ];
  const box = document.getElementById('cards');
  box.replaceChildren(...cards.filter(([k]) => k in s).map(([k, label]) => {
    const c = el('div', { class: 'card' });
    c.append(el('div', { class: 'label' }, label), el('div', { class: 'value', 'data-stat': k, 'data-value': s[k] }, statText(k, s[k])));
    return c;
  }));
  if (typeof s.max_pool_bytes === 'number' && s.max_pool_bytes > 0) {
    const c = el('div', { class: 'card' });
    c.append(el('div', { class: 'label' }, 'pool limit used'), el('div', { class: 'value' }, `${((100 * s.pool_total_size) / s.max_pool_bytes).toFixed(1)}%`));
    box.append(c);
  }
  const rss = el('div', { class: 'card' });
  rss.append(el('div', { class: 'label' }, 'process RSS'), el('div', { class: 'value', 'data-stat': 'process.rss_bytes', 'data-value': doc.process?.rss_bytes }, M.formatBytes(doc.process?.rss_bytes ?? 0)));
  const conns = el('div', { class: 'card' });
  conns.append(el('div', { class: 'label' }, 'NBD connections'), el('div', { class: 'value', 'data-nbd': 'connections_active', 'data-value': doc.nbd?.connections_active }, String(doc.nbd?.connections_active ?? '-')));
  box.append(rss, conns);
}

function renderStoreTable(doc, prev) {
  const s = doc.store ?? {};
  const dt = prev ? (doc.time_ms - prev.time_ms) / 1000 : 0;
  const rows = Object.keys(s).filter((k) => typeof s[k] === 'number').sort().map((k) => {
    const tr = el('tr', { 'data-stat-row': k });
    const counter = M.storeStatKind(k) === 'counter';
    tr.append(
      el('td', {}, k),
      el('td', { 'data-stat': k, 'data-value': s[k] }, statText(k, s[k])),
      el('td', {}, counter ? M.formatRate(M.ratePerSecond(s[k], prev?.store?.[k], dt)) : ''),
      el('td', { class: 'help' }, M.storeHelp(k)),
    );
    return tr;
  });
  document.querySelector('#store-table tbody').replaceChildren(...rows);
}

function renderNbdTable(doc, prev) {
  const n = doc.nbd ?? {};
  const dt = prev ? (doc.time_ms - prev.time_ms) / 1000 : 0;
  const rows = [];
  for (const [k, v] of Object.entries(n)) {
    if (typeof v === 'number') {
      const tr = el('tr');
      const counter = !M.NBD_GAUGES.has(k);
      tr.append(el('td', {}, k), el('td', { 'data-nbd': k, 'data-value': v }, v.toLocaleString('en')),
        el('td', {}, counter ? M.formatRate(M.ratePerSecond(v, prev?.nbd?.[k], dt)) : ''));
      rows.push(tr);
    } else if (k === 'requests' || k === 'errors') {
      for (const [sub, x] of Object.entries(v ?? {})) {
        if (x === 0) continue;
        const tr = el('tr');
        tr.append(el('td', {}, `${k}.${sub}`), el('td', { 'data-nbd': `${k}.${sub}`, 'data-value': x }, x.toLocaleString('en')),
          el('td', {}, M.formatRate(M.ratePerSecond(x, prev?.nbd?.[k]?.[sub] ?? 0, dt))));
        rows.push(tr);
      }
    }
  }
  document.querySelector('#nbd-table tbody').replaceChildren(...rows);
}

function renderErrors(doc) {
  const s = doc.store ?? {};
  const n = doc.nbd ?? {};
  const items = M.withoutAbsentTier(M.ERROR_STATS, s).filter((k) => k in s).map((k) => [k, s[k]]);
  items.push(['nbd request_errors_total', n.request_errors_total ?? 0], ['nbd protocol_errors', n.protocol_errors ?? 0]);
  for (const [errno, x] of Object.entries(n.errors ?? {})) items.push([`nbd ${errno}`, x]);
  document.querySelector('#errors-table tbody').replaceChildren(...items.map(([k, v]) => {
    const tr = el('tr');
    tr.append(el('td', {}, k), el('td', { class: v > 0 ? 'nonzero' : undefined, 'data-error': k, 'data-value': v }, v.toLocaleString('en')));
    return tr;
  }));
}

function renderLatency(doc) {
  const lat = M.latencyOf(doc.nbd);
  const kinds = Object.keys(lat);
  document.getElementById('latency-note').hidden = kinds.length > 0;
  document.querySelector('#latency-table tbody').replaceChildren(...kinds.map((k) => {
    const h = lat[k];
    const tr = el('tr', { 'data-latency': k });
    tr.append(el('td', {}, M.LATENCY_LABELS[k] ?? k), el('td', { 'data-value': h.count }, h.count.toLocaleString('en')),
      ...[0.5, 0.9, 0.99].map((q) => el('td', {}, M.formatSeconds(M.latencyQuantile(h, q)))),
      el('td', {}, M.formatSeconds(h.count > 0 ? h.sum_seconds / h.count : null)));
    return tr;
  }));
}

function renderExports(doc) {
  const rows = (doc.exports ?? []).map((e) => {
    const tr = el('tr', { 'data-export': e.name });
    const written = e.pages > 0 ? `${((100 * ((e.data_pages ?? 0) + (e.zero_pages ?? 0))) / e.pages).toFixed(1)}%` : '-';
    tr.append(
      el('td', {}, e.name === '' ? '"" (default)' : e.name),
      el('td', { 'data-value': e.size }, M.formatBytes(e.size)),
      el('td', {}, e.read_only ? 'ro' : 'rw'),
      el('td', { 'data-field': 'data_pages', 'data-value': e.data_pages }, (e.data_pages ?? '-').toLocaleString('en')),
      el('td', { 'data-field': 'zero_pages', 'data-value': e.zero_pages }, (e.zero_pages ?? '-').toLocaleString('en')),
      el('td', { 'data-field': 'hole_pages', 'data-value': e.hole_pages }, (e.hole_pages ?? '-').toLocaleString('en')),
      el('td', {}, written),
    );
    return tr;
  });
  document.querySelector('#exports-table tbody').replaceChildren(...rows);
}

// ---- the stream ------------------------------------------------------------------------------

function onFrame(doc) {
  const prev = state.last;
  const current = seriesOf(doc, prev);
  state.times.push(doc.time_ms / 1000);
  state.docs.push(doc);
  const n = state.times.length;
  for (const [, key, , v] of current) {
    // A series seen for the first time gets nulls for the frames before it.
    if (!state.cols.has(key)) state.cols.set(key, new Array(n - 1).fill(null));
  }
  const now = new Map(current.map(([, key, , v]) => [key, v]));
  for (const [key, col] of state.cols) col.push(now.has(key) ? now.get(key) : null);
  if (n > HISTORY) {
    state.times.shift();
    state.docs.shift();
    for (const col of state.cols.values()) col.shift();
  }
  state.last = doc;
  state.frames++;

  document.getElementById('server').textContent = `v${doc.version} · pid ${doc.pid} · up ${doc.uptime_seconds}s · page ${doc.store?.page_size ?? '?'} B`;
  renderCards(doc);
  redraw(current);
  renderLatency(doc);
  renderErrors(doc);
  renderExports(doc);
  renderStoreTable(doc, prev);
  renderNbdTable(doc, prev);
}

function setStatus(s) {
  const e = document.getElementById('status');
  e.dataset.state = s;
  e.textContent = s;
}

const events = new EventSource('/events');
events.onopen = () => setStatus('live');
events.onerror = () => setStatus('reconnecting');
events.onmessage = (ev) => {
  setStatus('live');
  onFrame(JSON.parse(ev.data));
};
