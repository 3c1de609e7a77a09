/**
 * `npm run bench:nbd`: zdedup as an NBD server against nbdkit's memory plugin, same client, same data.
 *
 * For every corpus (bench/corpora.ts, plus the real-process image of bench/process-image.ts) and
 * every server, a fresh server is started with an export of exactly the corpus size, then:
 *   write   nbdcopy CORPUS URI          -> MB/s (10^6 bytes/s) and server RSS growth (VmRSS)
 *   read    nbdcopy URI /dev/shm/out    -> MB/s, then byte-compared with the corpus
 *   latency fio --ioengine=nbd, 4 KiB random reads at queue depth 1 over the written range
 *           -> p50 / p99 completion latency through the socket
 * Servers: zdedup --codec lz4, zdedup --codec zstd, nbdkit memory allocator=zstd (the baseline
 * every ratio is taken against), nbdkit memory allocator=sparse (plain RAM, no compression).
 *
 * The goal stated in issue 3: zdedup writes at least as fast as nbdkit allocator=zstd and holds the
 * real-process image in no more memory than nbdkit-zstd (with --codec zstd). The bench prints
 * whether each held, and records the numbers either way.
 *
 * RSS growth is VmRSS after the write minus VmRSS when the server was ready: it includes whatever
 * the server's runtime keeps (for zdedup, the V8 heap and buffers), which is the honest cost.
 *
 *   usage: npm run bench:nbd -- [--mib 256] [--servers a,b] [--corpora a,b] [--lat-ios 20000] [--no-save]
 * Results: bench/results/nbd-<date>.{json,md}. Needs nbdkit, nbdcopy (libnbd-bin) and fio; root for
 * the process image.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { buildCorpus, GENERATORS, PAGE } from './corpora.js';
import { describeMachine, machineMarkdown } from './machine.js';
import { buildProcessImage } from './process-image.js';
import {
  filesEqual, freePort, loadavg, readFioReport, REPO, saveResults, SERVE_NODE_FLAGS, spawnServer, stopServer, toolVersion, waitListening,
} from './servers.js';

const BASELINE = 'nbdkit-zstd';

interface ServerSpec {
  name: string;
  /** The command line for an export of `size` bytes on `socket`; `http` for zdedup's /stats. */
  argv(socket: string, size: number, http: string): [string, string[]];
  stats: boolean;
}

const SERVERS: ServerSpec[] = [
  { name: 'zdedup-lz4', stats: true, argv: (s, n, h) => [process.execPath, [...SERVE_NODE_FLAGS, join(REPO, 'bin/zdedup.js'), 'serve', '--socket', s, '--size', String(n), '--codec', 'lz4', '--http', h]] },
  { name: 'zdedup-zstd', stats: true, argv: (s, n, h) => [process.execPath, [...SERVE_NODE_FLAGS, join(REPO, 'bin/zdedup.js'), 'serve', '--socket', s, '--size', String(n), '--codec', 'zstd', '--http', h]] },
  { name: 'nbdkit-zstd', stats: false, argv: (s, n) => ['nbdkit', ['-f', '-U', s, 'memory', String(n), 'allocator=zstd']] },
  { name: 'nbdkit-sparse', stats: false, argv: (s, n) => ['nbdkit', ['-f', '-U', s, 'memory', String(n), 'allocator=sparse']] },
];

interface Row {
  corpus: string;
  server: string;
  bytes: number;
  error: string | null;
  write_mb_s: number | null;
  read_mb_s: number | null;
  rss_before_bytes: number | null;
  rss_after_write_bytes: number | null;
  rss_growth_bytes: number | null;
  /** corpus bytes per byte of RSS growth (higher is better) */
  bytes_per_rss_byte: number | null;
  verified: boolean | null;
  lat_p50_us: number | null;
  lat_p99_us: number | null;
  lat_ios: number | null;
  store: Record<string, number> | null;
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

function vmRssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

async function fetchStore(http: string): Promise<Record<string, number> | null> {
  try {
    const res = await fetch(`http://${http}/stats`, { signal: AbortSignal.timeout(3000) });
    const body = (await res.json()) as Record<string, unknown>;
    const src = (typeof body['store'] === 'object' && body['store'] !== null && !('stored_pages' in body) ? body['store'] : body) as Record<string, unknown>;
    const out: Record<string, number> = {};
    for (const k of ['stored_pages', 'zero_pages', 'same_filled_pages', 'duplicate_pages', 'unique_objects', 'pool_total_size',
      'compressed_bytes', 'metadata_bytes', 'compression_ratio', 'dedup_ratio', 'effective_ratio']) {
      if (typeof src[k] === 'number') out[k] = src[k] as number;
    }
    return out;
  } catch {
    return null;
  }
}

/** Runs a command to completion; returns elapsed seconds (the only thing this bench times). */
function timed(cmd: string, args: string[]): number {
  const t0 = process.hrtime.bigint();
  execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

function fioLatency(uri: string, size: number, ios: number, out: string): { p50: number; p99: number; ios: number } {
  execFileSync('fio', ['--name=randread4k', '--ioengine=nbd', `--uri=${uri}`, '--rw=randread', '--bs=4k', '--iodepth=1',
    `--size=${size}`, `--number_ios=${ios}`, '--randrepeat=1', '--output-format=json', `--output=${out}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  const r = readFioReport(out).read;
  return { p50: r.p50_us, p99: r.p99_us, ios: r.ios };
}

// ---------------------------------------------------------------------------------------------
// One server, one corpus
// ---------------------------------------------------------------------------------------------

async function runOne(spec: ServerSpec, corpus: string, path: string, latIos: number, work: string): Promise<Row> {
  const bytes = statSync(path).size;
  const row: Row = {
    corpus, server: spec.name, bytes, error: null, write_mb_s: null, read_mb_s: null, rss_before_bytes: null,
    rss_after_write_bytes: null, rss_growth_bytes: null, bytes_per_rss_byte: null, verified: null,
    lat_p50_us: null, lat_p99_us: null, lat_ios: null, store: null,
  };
  const socket = join(work, `${spec.name}.sock`);
  rmSync(socket, { force: true });
  const http = `127.0.0.1:${await freePort()}`;
  const [cmd, args] = spec.argv(socket, bytes, http);
  const { child, log } = spawnServer(cmd, args, 2000);
  const uri = `nbd+unix:///?socket=${socket}`;
  const out = join('/dev/shm', `zdedup-bench-${process.pid}.out`);
  try {
    await waitListening(socket, child, log, 400);
    if (spec.stats) await fetchStore(http); // let the HTTP side finish starting before the baseline
    row.rss_before_bytes = vmRssBytes(child.pid!);
    row.write_mb_s = bytes / 1e6 / timed('nbdcopy', [path, uri]);
    row.rss_after_write_bytes = vmRssBytes(child.pid!);
    row.rss_growth_bytes = row.rss_after_write_bytes - row.rss_before_bytes;
    row.bytes_per_rss_byte = row.rss_growth_bytes > 0 ? bytes / row.rss_growth_bytes : null;
    if (spec.stats) row.store = await fetchStore(http);
    rmSync(out, { force: true });
    row.read_mb_s = bytes / 1e6 / timed('nbdcopy', [uri, out]);
    row.verified = filesEqual(path, out);
    rmSync(out, { force: true });
    const lat = fioLatency(uri, bytes, latIos, join(work, `${spec.name}.fio.json`));
    row.lat_p50_us = lat.p50;
    row.lat_p99_us = lat.p99;
    row.lat_ios = lat.ios;
  } catch (e) {
    row.error = `${(e as Error).message.split('\n')[0]}${log() ? ` | server: ${log().trim().split('\n').slice(-2).join(' / ')}` : ''}`;
  } finally {
    rmSync(out, { force: true });
    await stopServer(child, 200);
    rmSync(socket, { force: true });
  }
  return row;
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

const f1 = (v: number | null): string => (v === null ? '-' : v.toFixed(1));
const f2 = (v: number | null): string => (v === null ? '-' : v.toFixed(2));
const mib = (v: number | null): string => (v === null ? '-' : (v / 2 ** 20).toFixed(1));

function ratio(a: number | null, b: number | null): number | null {
  return a === null || b === null || b === 0 ? null : a / b;
}

function table(rows: Row[]): string {
  const head = '| corpus | server | write MB/s | read MB/s | RSS growth MiB | store pool MiB | corpus/RSS | 4K read p50 µs | p99 µs | write ×base | RSS ×base | verified |';
  const lines = [head, '|' + '---|'.repeat(12)];
  for (const r of rows) {
    const base = rows.find((b) => b.corpus === r.corpus && b.server === BASELINE);
    const rss = r.rss_growth_bytes;
    lines.push(`| ${r.corpus} | ${r.server} | ${f1(r.write_mb_s)} | ${f1(r.read_mb_s)} | ${mib(rss)} | ${mib(r.store?.['pool_total_size'] ?? null)} | ${f2(r.bytes_per_rss_byte)} | ` +
      `${f1(r.lat_p50_us)} | ${f1(r.lat_p99_us)} | ${f2(ratio(r.write_mb_s, base?.write_mb_s ?? null))} | ` +
      `${f2(ratio(rss, base?.rss_growth_bytes ?? null))} | ${r.error !== null ? `ERROR: ${r.error}` : r.verified ? 'yes' : 'NO'} |`);
  }
  return lines.join('\n');
}

interface Goal { goal: string; held: boolean | null; detail: string }

function goals(rows: Row[]): Goal[] {
  const out: Goal[] = [];
  for (const corpus of [...new Set(rows.map((r) => r.corpus))]) {
    const z = rows.find((r) => r.corpus === corpus && r.server === 'zdedup-zstd');
    const b = rows.find((r) => r.corpus === corpus && r.server === BASELINE);
    if (!z || !b) continue;
    const held = z.write_mb_s === null || b.write_mb_s === null ? null : z.write_mb_s >= b.write_mb_s;
    out.push({ goal: `${corpus}: zdedup-zstd writes at least as fast as nbdkit-zstd`, held,
      detail: `${f1(z.write_mb_s)} vs ${f1(b.write_mb_s)} MB/s` });
  }
  const z = rows.find((r) => r.corpus === 'process-image' && r.server === 'zdedup-zstd');
  const b = rows.find((r) => r.corpus === 'process-image' && r.server === BASELINE);
  if (z && b) {
    const held = z.rss_growth_bytes === null || b.rss_growth_bytes === null ? null : z.rss_growth_bytes <= b.rss_growth_bytes;
    out.push({ goal: 'process-image: zdedup-zstd holds it in no more memory than nbdkit-zstd', held,
      detail: `${mib(z.rss_growth_bytes)} vs ${mib(b.rss_growth_bytes)} MiB RSS growth` });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      mib: { type: 'string', default: '256' },
      servers: { type: 'string', default: SERVERS.map((s) => s.name).join(',') },
      corpora: { type: 'string', default: [...Object.keys(GENERATORS), 'process-image'].join(',') },
      'lat-ios': { type: 'string', default: '20000' },
      'no-save': { type: 'boolean', default: false },
    },
  });
  const mibN = Number(values.mib);
  const latIos = Number(values['lat-ios']);
  const servers = values.servers.split(',').map((n) => {
    const s = SERVERS.find((x) => x.name === n);
    if (!s) throw new Error(`unknown server ${n} (have ${SERVERS.map((x) => x.name).join(', ')})`);
    return s;
  });
  const missing = ['nbdcopy', 'fio', ...(servers.some((s) => s.name.startsWith('nbdkit')) ? ['nbdkit'] : [])]
    .filter((t) => toolVersion(t) === 'missing');
  if (missing.length > 0) throw new Error(`missing tools: ${missing.join(', ')} (apt-get install libnbd-bin fio nbdkit)`);

  const work = join(tmpdir(), `zdedup-bench-nbd-${process.pid}`);
  mkdirSync(work, { recursive: true });
  const corpora: Array<{ name: string; path: string; bytes: number; sources?: unknown }> = [];
  for (const name of values.corpora.split(',')) {
    if (name === 'process-image') {
      const img = await buildProcessImage();
      corpora.push({ name, path: img.path, bytes: img.pages * PAGE, sources: img.sources });
    } else {
      const path = buildCorpus(name, mibN * (2 ** 20 / PAGE));
      corpora.push({ name, path, bytes: statSync(path).size });
    }
  }
  // warm the page cache so every server is fed from RAM, not from the disk on its first run
  for (const c of corpora) execFileSync('cat', [c.path], { stdio: ['ignore', 'ignore', 'ignore'] });

  // other work on the machine skews every figure: record the load so readers can judge
  const loadBefore = loadavg();
  const rows: Row[] = [];
  try {
    for (const c of corpora) {
      for (const s of servers) {
        process.stderr.write(`bench:nbd ${c.name} (${(c.bytes / 2 ** 20).toFixed(0)} MiB) -> ${s.name} ... `);
        const r = await runOne(s, c.name, c.path, latIos, work);
        rows.push(r);
        process.stderr.write(r.error !== null ? `error: ${r.error}\n` :
          `write ${f1(r.write_mb_s)} MB/s, read ${f1(r.read_mb_s)} MB/s, RSS +${mib(r.rss_growth_bytes)} MiB, p50 ${f1(r.lat_p50_us)} µs\n`);
      }
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }

  const loadAfter = loadavg();
  const machine = describeMachine(['nbdkit', 'libnbd-bin', 'fio']);
  const tools = { nbdkit: toolVersion('nbdkit'), nbdcopy: toolVersion('nbdcopy'), fio: toolVersion('fio') };
  const g = goals(rows);
  const md = [
    `# NBD benchmark: zdedup vs nbdkit memory plugin`,
    '',
    machineMarkdown(machine),
    `Tools: ${tools.nbdkit}, ${tools.nbdcopy}, ${tools.fio}. Load average (1/5/15 min) before: ${loadBefore}, after: ${loadAfter}.`,
    '',
    `Each server gets a fresh export of exactly the corpus size on a unix socket. Write = \`nbdcopy CORPUS URI\`, ` +
    `read = \`nbdcopy URI /dev/shm/out\` then byte-compared; MB = 10^6 bytes. RSS growth = server VmRSS after the write ` +
    `minus VmRSS when ready. Latency = fio nbd engine, 4 KiB random reads, QD1, ${latIos} I/Os. ` +
    `×base = ratio to ${BASELINE} on the same corpus (write: higher is better; RSS: lower is better). ` +
    `"store pool" is zdedup's pool_total_size from /stats after the write: RSS growth minus pool is what the Node ` +
    `runtime and the store's metadata cost. nbdcopy detects all-zero blocks and sends them as zeroing/trim requests, not ` +
    `data, so the zero pages of every corpus never reach a server as WRITEs. nbdkit allocator=zstd compresses 32 KiB ` +
    `pages; zdedup compresses each 4 KiB page alone, so that it can load one page without decompressing its neighbours.`,
    '',
    table(rows),
    '',
    '## Goals (issue 3)',
    '',
    ...g.map((x) => `- ${x.held === null ? 'NOT MEASURED' : x.held ? 'held' : 'NOT held'}: ${x.goal} (${x.detail})`),
    '',
  ].join('\n');
  process.stdout.write(md);
  if (!values['no-save']) {
    saveResults('nbd', {
      bench: 'nbd', machine, tools, load_before: loadBefore, load_after: loadAfter, params: { corpus_mib: mibN, lat_ios: latIos, baseline: BASELINE },
      corpora: corpora.map(({ name, bytes, sources }) => ({ name, bytes, sources })), results: rows, goals: g,
    }, md);
  }
  if (rows.some((r) => r.verified === false)) process.exitCode = 1; // a server returned wrong data
}

main().catch((e) => {
  process.stderr.write(`bench:nbd: ${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});
