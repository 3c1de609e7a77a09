/**
 * `zdedup stats`: reads a running server's /stats over HTTP and prints it, as a table for people
 * or as the raw JSON document for scripts (--json). The address comes from --http, else
 * ZDEDUP_HTTP, else the server's default (127.0.0.1:10810).
 */
import type { Command } from 'commander';
import { ZdedupError } from '../../../core/errors.js';
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
    .addHelpText('after', `
Examples:
  zdedup stats                          table from the server on ${DEFAULT_HTTP}
  zdedup stats --json | jq .store.dedup_ratio
  zdedup stats --http 127.0.0.1:9000
`)
    .action(async (opts: { json?: boolean; http?: string }) => {
      const addr = parseHostPort(opts.http ?? process.env.ZDEDUP_HTTP ?? DEFAULT_HTTP, undefined, '--http');
      const host = addr.host.includes(':') ? `[${addr.host}]` : addr.host;
      const url = `http://${host}:${addr.port}/stats`;
      let text: string;
      try {
        const res = await fetch(url);
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        text = await res.text();
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
    if (v !== null && typeof v === 'object') {
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
