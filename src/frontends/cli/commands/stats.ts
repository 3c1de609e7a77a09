/**
 * `zdedup stats`: reads a running server's /stats over HTTP and prints it, as a table for people
 * or as the raw JSON document for scripts (--json). The address comes from --http, else
 * ZDEDUP_HTTP, else the server's default (127.0.0.1:10810).
 *
 * `zdedup stats --watch [SECONDS]` is a live view in the terminal: it reads /stats every SECONDS
 * (default 1) and redraws one screen in place (the terminal's alternate screen, so the shell's
 * scrollback is left as it was): ratios, pages by kind, memory by tier, rates between the last
 * two readings, latency percentiles of the requests in between, background activity, errors,
 * exports. q, Q, Ctrl-C or SIGTERM restore the terminal and exit 0. A server that stops
 * answering is shown as such and retried; the view outlives a server restart. When stdout is not
 * a terminal each reading is printed plainly, one after the other.
 *
 * What each stat is (counter or gauge, how to name and format it) comes from
 * src/frontends/http/stat-model.ts, shared with /metrics and the dashboard.
 */
import type { Command } from 'commander';
import { ZdedupError } from '../../../core/errors.js';
import {
  ACTIVITY_STATS, ERROR_STATS, LATENCY_KINDS, LATENCY_LABELS, formatBytes as fmtBytes, formatRate, formatSeconds,
  latencyDelta, latencyOf, latencyQuantile, memoryStats, ratePerSecond, withoutAbsentTier,
} from '../../http/stat-model.js';
import type { Ctx } from '../main.js';
import { DEFAULT_HTTP, parseHostPort } from './serve.js';

interface StatsDoc {
  version?: string;
  pid?: number;
  uptime_seconds?: number;
  store?: Record<string, number>;
  exports?: { name: string; size: number; read_only: boolean; pages: number; data_pages?: number; zero_pages?: number; hole_pages?: number }[];
  nbd?: Record<string, unknown>;
}

export function registerStats(program: Command, ctx: Ctx): void {
  program
    .command('stats')
    .summary("show a running server's store and NBD statistics")
    .description("Reads /stats from a running `zdedup serve` and prints the store's ratios and counters, the exports, and the NBD server's counters.")
    .option('--json', 'print the raw /stats JSON document')
    .option('--http <host:port>', `the server's HTTP address (env ZDEDUP_HTTP, default ${DEFAULT_HTTP})`)
    .option('-w, --watch [seconds]', 'live view: redraw every SECONDS (default 1) until q or Ctrl-C')
    .addHelpText('after', `
Examples:
  zdedup stats                          table from the server on ${DEFAULT_HTTP}
  zdedup stats --json | jq .store.dedup_ratio
  zdedup stats --http 127.0.0.1:9000
  zdedup stats --watch                  live: rates, ratios, tiers, latency; q or Ctrl-C quits
  zdedup stats --watch 5                redraw every 5 seconds
The same numbers, with charts: open http://${DEFAULT_HTTP}/ in a browser.
`)
    .action(async (opts: { json?: boolean; http?: string; watch?: string | boolean }) => {
      const addr = parseHostPort(opts.http ?? process.env.ZDEDUP_HTTP ?? DEFAULT_HTTP, undefined, '--http');
      const host = addr.host.includes(':') ? `[${addr.host}]` : addr.host;
      const url = `http://${host}:${addr.port}/stats`;
      if (opts.watch !== undefined && opts.watch !== false) {
        if (opts.json) throw new ZdedupError('ERR_INVALID_ARGUMENT', '--watch and --json do not go together (for a stream of JSON, read /events)');
        const seconds = opts.watch === true ? 1 : Number(opts.watch);
        if (!Number.isFinite(seconds) || seconds < 0.1 || seconds > 3600) {
          throw new ZdedupError('ERR_INVALID_ARGUMENT', `--watch "${String(opts.watch)}": expected seconds between 0.1 and 3600`);
        }
        ctx.exitCode = await watch(url, seconds);
        return;
      }
      let text: string;
      try {
        text = await fetchStats(url);
      } catch (e) {
        const cause = (e as { cause?: { code?: string } }).cause?.code ?? (e as Error).message;
        throw new ZdedupError('ERR_IO', `no zdedup server answers at ${url} (${cause}); is \`zdedup serve --http ${addr.host}:${addr.port}\` running?`);
      }
      if (opts.json) {
        process.stdout.write(text.endsWith('\n') ? text : text + '\n');
      } else {
        process.stdout.write(formatStats(JSON.parse(text) as StatsDoc));
      }
      ctx.exitCode = 0;
    });
}

async function fetchStats(url: string): Promise<string> {
  const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
  if (!res.ok) throw new Error(`HTTP ${res.status}`);
  return res.text();
}

const BYTE_KEYS = /(_bytes|_size|^bytes_)/;

/** Human-readable rendering of a /stats document. */
export function formatStats(d: StatsDoc): string {
  const lines: string[] = [];
  lines.push(`zdedup ${d.version ?? '?'}  pid ${d.pid ?? '?'}  up ${formatDuration(d.uptime_seconds ?? 0)}`);
  const s = d.store ?? {};
  lines.push('', 'store');
  const headline = ['logical_bytes', 'pool_total_size', 'effective_ratio', 'compression_ratio', 'dedup_ratio'];
  const keys = [...headline.filter((k) => k in s), ...Object.keys(s).filter((k) => !headline.includes(k)).sort()];
  for (const k of keys) lines.push(`  ${k.padEnd(30)} ${formatValue(k, s[k]!)}`);
  if (d.exports && d.exports.length > 0) {
    lines.push('', 'exports');
    lines.push(`  ${'name'.padEnd(20)} ${'size'.padStart(10)} ${'mode'.padEnd(4)} ${'data'.padStart(10)} ${'zero'.padStart(10)} ${'hole'.padStart(10)}`);
    for (const e of d.exports) {
      lines.push(`  ${JSON.stringify(e.name).padEnd(20)} ${formatBytes(e.size).padStart(10)} ${(e.read_only ? 'ro' : 'rw').padEnd(4)} ` +
        `${String(e.data_pages ?? '-').padStart(10)} ${String(e.zero_pages ?? '-').padStart(10)} ${String(e.hole_pages ?? '-').padStart(10)}`);
    }
  }
  const n = d.nbd ?? {};
  lines.push('', 'nbd');
  for (const [k, v] of Object.entries(n)) {
    if (k === 'latency') {
      for (const [kind, h] of Object.entries(latencyOf(n))) {
        lines.push(`  ${`latency.${kind}`.padEnd(30)} count=${h.count} p50=${formatSeconds(latencyQuantile(h, 0.5))} ` +
          `p99=${formatSeconds(latencyQuantile(h, 0.99))} mean=${formatSeconds(h.count > 0 ? h.sum_seconds / h.count : null)}`);
      }
    } else if (v !== null && typeof v === 'object') {
      const parts = Object.entries(v as Record<string, number>).filter(([, x]) => x !== 0).map(([a, x]) => `${a}=${x}`);
      lines.push(`  ${k.padEnd(30)} ${parts.length > 0 ? parts.join(' ') : '-'}`);
    } else {
      lines.push(`  ${k.padEnd(30)} ${formatValue(k, v as number)}`);
    }
  }
  return lines.join('\n') + '\n';
}

function formatValue(key: string, v: number): string {
  if (typeof v !== 'number') return String(v);
  if (key.endsWith('_ratio')) return v.toFixed(2);
  if (BYTE_KEYS.test(key) && key !== 'page_size') return `${formatBytes(v)} (${v})`;
  return String(v);
}

function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

function formatDuration(sec: number): string {
  const h = Math.floor(sec / 3600), m = Math.floor((sec % 3600) / 60), s = sec % 60;
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : m > 0 ? `${m}m${String(s).padStart(2, '0')}s` : `${s}s`;
}

// ---------------------------------------------------------------------------------------------
// --watch
// ---------------------------------------------------------------------------------------------

/** One reading: the document and when it was read (this process's clock, for rates). */
export interface Reading { doc: StatsDoc & { process?: { rss_bytes?: number } }; at: number }

const ESC = '\x1b[';
const ALT_SCREEN_ON = `${ESC}?1049h${ESC}?25l`;   // alternate screen, cursor hidden
const ALT_SCREEN_OFF = `${ESC}?25h${ESC}?1049l`;  // cursor shown, back to the normal screen

/** Reads /stats every `seconds` and redraws until q / Ctrl-C / SIGTERM; returns the exit code. */
async function watch(url: string, seconds: number): Promise<number> {
  const out = process.stdout;
  const tty = out.isTTY === true;
  const input = process.stdin;
  let prev: Reading | null = null;
  let last: Reading | null = null;
  let problem: string | null = null;
  let timer: NodeJS.Timeout | undefined;
  let finish!: () => void;
  const finished = new Promise<void>((r) => { finish = r; });
  let stopped = false;

  const draw = (): void => {
    const width = tty ? out.columns || 100 : 100;
    const height = tty ? out.rows || 40 : Infinity;
    const lines = formatWatch(last, prev, { url, seconds, problem, width });
    if (!tty) { out.write(lines.join('\n') + '\n\n'); return; }
    const shown = lines.slice(0, height).map((l) => clip(l, width) + `${ESC}K`);
    out.write(`${ESC}H${shown.join('\r\n')}${ESC}J`);
  };
  const tick = async (): Promise<void> => {
    try {
      const doc = JSON.parse(await fetchStats(url)) as Reading['doc'];
      prev = last;
      last = { doc, at: Date.now() };
      problem = null;
    } catch (e) {
      problem = `no answer from ${url} (${(e as { cause?: { code?: string } }).cause?.code ?? (e as Error).message}); retrying`;
    }
    if (stopped) return;
    draw();
    timer = setTimeout(() => { void tick(); }, seconds * 1000);
  };
  const stop = (): void => {
    if (stopped) return;
    stopped = true;
    clearTimeout(timer);
    finish();
  };
  const onKey = (b: Buffer): void => {
    // q, Q, Ctrl-C (raw mode delivers it as a byte, not a signal), Ctrl-D.
    if (b.includes(0x71) || b.includes(0x51) || b.includes(0x03) || b.includes(0x04)) stop();
  };

  if (tty) out.write(ALT_SCREEN_ON);
  if (input.isTTY) { input.setRawMode(true); input.resume(); input.on('data', onKey); }
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  const onResize = (): void => { if (!stopped) draw(); };
  out.on('resize', onResize);
  void tick();
  await finished;
  out.off('resize', onResize);
  process.off('SIGINT', stop);
  process.off('SIGTERM', stop);
  if (input.isTTY) { input.off('data', onKey); input.setRawMode(false); input.pause(); }
  if (tty) out.write(ALT_SCREEN_OFF);
  return 0;
}

/** Cuts a line to `width` columns (the view is ASCII apart from µ, one column too). */
function clip(line: string, width: number): string {
  return line.length > width ? line.slice(0, Math.max(0, width - 1)) + '>' : line;
}

const num = (v: unknown): number | undefined => (typeof v === 'number' ? v : undefined);

/**
 * The watch screen for the newest reading and the one before it (rates and latency percentiles
 * are over the time between them). Pure: the test renders it without a terminal.
 */
export function formatWatch(now: Reading | null, prev: Reading | null,
  o: { url: string; seconds: number; problem: string | null; width: number }): string[] {
  const lines: string[] = [];
  const d = now?.doc;
  lines.push(`zdedup ${d?.version ?? '?'}  pid ${d?.pid ?? '?'}  up ${formatDuration(d?.uptime_seconds ?? 0)}  ${o.url}  every ${o.seconds}s  (q to quit)`);
  if (o.problem !== null) lines.push(`!! ${o.problem}`);
  if (d === undefined) return [...lines, '', 'waiting for the first reading...'];
  const s = d.store ?? {};
  const ps = prev?.doc.store ?? {};
  const n = (d.nbd ?? {}) as Record<string, unknown>;
  const pn = (prev?.doc.nbd ?? {}) as Record<string, unknown>;
  const dt = prev !== null ? (now!.at - prev.at) / 1000 : 0;
  const rate = (a: unknown, b: unknown): string => formatRate(ratePerSecond(num(a), num(b), dt));
  const byteRate = (a: unknown, b: unknown): string => {
    const r = ratePerSecond(num(a), num(b), dt);
    return r === null ? '-' : `${fmtBytes(r)}/s`;
  };
  const ratio = (k: string): string => (typeof s[k] === 'number' ? s[k]!.toFixed(2) : '-');
  const int = (v: number | undefined): string => (v === undefined ? '-' : v.toLocaleString('en'));
  const row = (label: string, text: string): void => { lines.push(`${label.padEnd(12)}${text}`); };
  /** Items after a label, three spaces apart, continued on more lines rather than past the width. */
  const wrap = (label: string, items: string[]): void => {
    let line = '';
    for (const it of items) {
      if (line !== '' && 12 + line.length + 3 + it.length > o.width) { row(label, line); label = ''; line = ''; }
      line = line === '' ? it : `${line}   ${it}`;
    }
    if (line !== '') row(label, line);
  };

  lines.push('');
  row('ratios', `effective ${ratio('effective_ratio')}   compression ${ratio('compression_ratio')}   dedup ${ratio('dedup_ratio')}`);
  const stored = s.stored_pages ?? 0, same = s.same_filled_pages ?? 0, zero = s.zero_pages ?? 0, dup = s.duplicate_pages ?? 0;
  row('pages', `stored ${int(s.stored_pages)}   zero ${int(zero)}   same-filled ${int(same - zero)}   duplicate ${int(dup)}   unique ${int(stored - same - dup)}`);
  const limit = typeof s.max_pool_bytes === 'number' && s.max_pool_bytes > 0
    ? ` of ${fmtBytes(s.max_pool_bytes)} (${((100 * (s.pool_total_size ?? 0)) / s.max_pool_bytes).toFixed(1)}%)` : '';
  wrap('memory', [`logical ${fmtBytes(s.logical_bytes ?? 0)}`, `RAM pool ${fmtBytes(s.pool_total_size ?? 0)}${limit}`,
    `metadata ${fmtBytes(s.metadata_bytes ?? 0)}`, `process RSS ${fmtBytes(d.process?.rss_bytes ?? 0)}`]);
  const tierMem = memoryStats(s).filter(([k]) => !['pool_total_size', 'max_pool_bytes', 'metadata_bytes'].includes(k));
  const tiers = tierMem.map(([k, label]) => `${label} ${fmtBytes(s[k]!)}`);
  if ((s.backing_size ?? 0) > 0 || (s.disk_bytes ?? 0) > 0) {
    if ('disk_segments' in s) tiers.push(`segments ${int(s.disk_segments)}`);
    if ('write_amplification' in s) tiers.push(`write amplification ${(s.write_amplification ?? 0).toFixed(2)}`);
    if ('backing_size' in s) tiers.push(`backing ${fmtBytes(s.backing_size!)}`);
  }
  wrap('tiers', tiers);

  lines.push('');
  const req = (n.requests ?? {}) as Record<string, number>;
  const preq = (pn.requests ?? {}) as Record<string, number>;
  const cmds = Object.keys(req).filter((k) => req[k]! > 0).map((k) => `${k} ${rate(req[k], preq[k] ?? 0)}`);
  wrap('nbd', [`read ${byteRate(n.bytes_read, pn.bytes_read)}`, `write ${byteRate(n.bytes_written, pn.bytes_written)}`,
    `requests ${rate(n.requests_total, pn.requests_total)}${cmds.length > 0 ? ` (${cmds.join(', ')})` : ''}`, `connections ${int(num(n.connections_active))}`]);
  wrap('store', [`store ${rate(s.store_calls, ps.store_calls)}`, `load ${rate(s.load_calls, ps.load_calls)}`,
    `dedup hits ${rate(s.dedup_hits, ps.dedup_hits)}`, `invalidated ${rate(s.invalidated_pages, ps.invalidated_pages)}`]);
  const lat = latencyOf(n);
  const plat = latencyOf(pn);
  const kinds = [...LATENCY_KINDS.filter((k) => lat[k] !== undefined), ...Object.keys(lat).filter((k) => !LATENCY_KINDS.includes(k))]
    .filter((k) => lat[k]!.count > 0);
  if (kinds.length > 0) {
    row('latency', `${'kind'.padEnd(18)}${'p50'.padStart(10)}${'p90'.padStart(10)}${'p99'.padStart(10)}${'req/s'.padStart(10)}   since the last reading`);
    for (const k of kinds) {
      const w = latencyDelta(lat[k]!, plat[k]);
      row('', `${(LATENCY_LABELS[k] ?? k).padEnd(18)}${formatSeconds(latencyQuantile(w, 0.5)).padStart(10)}` +
        `${formatSeconds(latencyQuantile(w, 0.9)).padStart(10)}${formatSeconds(latencyQuantile(w, 0.99)).padStart(10)}` +
        `${rate(lat[k]!.count, plat[k]?.count).padStart(10)}`);
    }
  }
  wrap('activity', withoutAbsentTier(ACTIVITY_STATS, s).filter((k) => k in s).map((k) => `${k.replace(/_/g, ' ')} ${rate(s[k], ps[k])}`));
  const errs = ERROR_STATS.filter((k) => (s[k] ?? 0) > 0).map((k) => `${k} ${int(s[k])} (${rate(s[k], ps[k])})`);
  for (const [errno, x] of Object.entries((n.errors ?? {}) as Record<string, number>)) if (x > 0) errs.push(`nbd ${errno} ${int(x)}`);
  if ((num(n.protocol_errors) ?? 0) > 0) errs.push(`nbd protocol_errors ${int(num(n.protocol_errors))}`);
  wrap('errors', errs.length > 0 ? errs : ['none']);

  if (d.exports && d.exports.length > 0) {
    lines.push('');
    row('exports', `${'name'.padEnd(16)} ${'size'.padStart(10)} mode ${'data'.padStart(10)} ${'zero'.padStart(10)} ${'hole'.padStart(12)}`);
    for (const e of d.exports) {
      row('', `${JSON.stringify(e.name).padEnd(16)} ${fmtBytes(e.size).padStart(10)} ${(e.read_only ? 'ro' : 'rw').padEnd(4)} ` +
        `${int(e.data_pages).padStart(10)} ${int(e.zero_pages).padStart(10)} ${int(e.hole_pages).padStart(12)}`);
    }
  }
  return lines;
}
