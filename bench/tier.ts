/**
 * `npm run bench:tier`: the disk tier of issue 7, measured in one run against its anchors.
 *
 * Everything lives in one directory on the local disk (--dir, default /var/tmp/zdedup-bench-tier;
 * not tmpfs), so every disk figure comes from the same filesystem:
 *   raw-fio          fio straight on a file there: 4 KiB random reads, direct=1, psync, QD1
 *                    (the raw-disk p50/p99 every disk-hit figure is held against)
 *   nbdkit-file      nbdkit's file plugin (cache=none) on a file there: the raw-disk NBD server
 *   zdedup-unbounded zdedup serve, no pool limit (everything stays in RAM)
 *   zdedup-limited   zdedup serve --max-pool POOL --backing DIR/backing.img --backing-size SIZE
 *   zdedup-tight     the same with a backing file only a little larger than the data needs (auto:
 *                    1.25x the disk_bytes zdedup-limited had after the first write), so the
 *                    segment cleaner has to run during the rewrite (with the 4 GiB backing the tier
 *                    never falls under the cleaner's low-water mark of max(4, segments/16) free
 *                    segments, so it never cleans)
 * Every server gets the same data: DATA MiB of a mixed, partly compressible page corpus (JSON and
 * log text, struct-like binary, incompressible, duplicates of recent pages, same-filled and zero
 * pages; built with the generators of bench/corpora.ts), 4x the pool by default.
 *
 * Per server:
 *   write    nbdcopy CORPUS URI, timed (MB = 10^6 bytes); then, for zdedup, /stats polled until the
 *            writer has settled (pool at or under its target): disk_bytes_written / logical bytes
 *            written and write_amplification.
 *   RAM hit  fio ioengine=nbd, randread, bs=4k, QD1 over the last --ram-mib written (the newest end
 *            of the LRU), run twice with the same seed: the first, unmeasured pass promotes the pages
 *            that went straight to disk while the pool was full; /stats disk_loads over the measured
 *            pass shows how many reads still were not RAM hits.
 *   disk hit the same over the first --disk-mib written (the oldest, written back first); the
 *            disk_loads delta confirms they came from the disk tier.
 *   read     nbdcopy URI /dev/shm/..., timed, byte-compared with the corpus.
 *   rewrite  (servers with a backing) fio ioengine=nbd randwrite, bsrange=4k-64k, fresh partly
 *            compressible buffers, io_size = a quarter of the data; then /stats polled until
 *            cleaned_segments and disk_bytes_written stop changing (or --settle-s): write_amplification.
 *
 * The process, socket, fio and comparison helpers are bench/servers.ts's, shared with bench/nbd.ts;
 * the machine description and the page generators are imported too.
 *
 *   usage: npm run bench:tier -- [--data-mib 1024] [--pool 256M] [--backing-size 4G]
 *          [--tight-backing-size auto|SIZE|off] [--segment-size 4M] [--codec lz4] [--dir /var/tmp/zdedup-bench-tier]
 *          [--lat-ios 20000] [--ram-mib 64] [--disk-mib 128] [--settle-s 120] [--servers a,b] [--no-save]
 *   quick:  npm run bench:tier -- --data-mib 256 --pool 64M --backing-size 1G --lat-ios 5000 --no-save
 * Results: bench/results/tier-<date>.{json,md}. Needs nbdkit, nbdcopy (libnbd-bin) and fio with its nbd engine.
 */
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, renameSync, rmSync, statSync, writeSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { buildMixedCorpus, PAGE } from './corpora.js';
import { describeMachine, machineMarkdown } from './machine.js';
import {
  filesEqual, freePort, type Lat, loadavg, readFioReport, REPO, saveResults, SERVE_NODE_FLAGS, sleep, spawnServer, stopServer, toolVersion,
  waitListening,
} from './servers.js';

const MiB = 2 ** 20;

// ---------------------------------------------------------------------------------------------
// Helpers (processes, sockets, /stats, fio)
// ---------------------------------------------------------------------------------------------

function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)([KMGT]?)i?B?$/i.exec(s.trim());
  if (!m) throw new Error(`bad size ${s}`);
  return Math.round(Number(m[1]) * 1024 ** ' KMGT'.indexOf((m[2] || ' ').toUpperCase()));
}

type Stats = Record<string, number>;

async function fetchStats(http: string): Promise<Stats> {
  const res = await fetch(`http://${http}/stats`, { signal: AbortSignal.timeout(10000) });
  const body = (await res.json()) as { store?: Record<string, unknown> };
  const out: Stats = {};
  for (const [k, v] of Object.entries(body.store ?? {})) if (typeof v === 'number') out[k] = v;
  return out;
}

/** Client commands that take longer than this are killed and reported as a hang (--step-timeout-s). */
let stepTimeoutS = 600;

/** Runs a command to completion (async, so the event loop can poll /stats meanwhile); returns seconds. */
function run(cmd: string, args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const c = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    let timedOut = false;
    const timer = setTimeout(() => { timedOut = true; c.kill('SIGKILL'); }, stepTimeoutS * 1000);
    c.stderr!.on('data', (b: Buffer) => { err = (err + b.toString()).slice(-2000); });
    c.once('error', (e) => { clearTimeout(timer); reject(e); });
    c.once('exit', (code, sig) => {
      clearTimeout(timer);
      const what = `${cmd} ${args.slice(0, 3).join(' ')} ...`;
      if (code === 0) resolve(Number(process.hrtime.bigint() - t0) / 1e9);
      else if (timedOut) reject(new Error(`HANG: ${what} made no finish within ${stepTimeoutS} s (killed)`));
      else reject(new Error(`${what} failed (${code ?? sig}): ${err.trim().split('\n').slice(-3).join(' / ')}`));
    });
  });
}

/** Drops a file's pages from the page cache (GNU dd's documented idiom). */
function dropFileCache(path: string): void {
  execFileSync('dd', [`if=${path}`, 'iflag=nocache', 'count=0', 'status=none']);
}

async function fio(args: string[], out: string): Promise<{ read: Lat; write_bytes: number }> {
  await run('fio', [...args, '--output-format=json', `--output=${out}`]);
  return readFioReport(out);
}

/** 4 KiB random reads at QD1 through the NBD socket over [offset, offset+size). */
function fioNbdRead(uri: string, offset: number, size: number, ios: number, out: string): Promise<{ read: Lat }> {
  return fio(['--name=randread4k', '--ioengine=nbd', `--uri=${uri}`, '--rw=randread', '--bs=4k', '--iodepth=1',
    `--offset=${offset}`, `--size=${size}`, `--number_ios=${Math.min(ios, size / PAGE)}`, '--randrepeat=1'], out);
}

/** The zdedup build measured: $ZDEDUP_BENCH_COMMIT (a run from an exported tree), else the repository's HEAD, marked when src/ or bin/ differ from it. */
function zdedupCommit(): string {
  if (process.env.ZDEDUP_BENCH_COMMIT) return process.env.ZDEDUP_BENCH_COMMIT;
  try {
    const head = execFileSync('git', ['-C', REPO, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const dirty = execFileSync('git', ['-C', REPO, 'status', '--porcelain', '--', 'src', 'bin'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    return dirty ? `${head} + uncommitted changes in src/ or bin/` : head;
  } catch { return 'unknown'; }
}

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

interface Params {
  dataBytes: number; pool: string; backingSize: string; tightBackingSize: string | null; segmentSize: string;
  codec: string; dir: string; latIos: number; ramBytes: number; diskBytes: number; settleS: number;
}

interface ServerSpec {
  name: string;
  zdedup: boolean;
  backing: boolean;
  argv(p: Params, socket: string, http: string): [string, string[]];
}

function zdedupArgv(p: Params, socket: string, http: string, extra: string[]): [string, string[]] {
  return [process.execPath, [...SERVE_NODE_FLAGS, join(REPO, 'bin/zdedup.js'), 'serve', '--socket', socket,
    '--size', String(p.dataBytes), '--codec', p.codec, '--http', http, '--log-level', 'warn', ...extra]];
}

const SERVERS: ServerSpec[] = [
  { name: 'nbdkit-file', zdedup: false, backing: false,
    argv: (p, s) => ['nbdkit', ['-f', '--exit-with-parent', '-U', s, 'file', `file=${join(p.dir, 'nbdkit-file.img')}`, 'cache=none']] },
  { name: 'zdedup-unbounded', zdedup: true, backing: false, argv: (p, s, h) => zdedupArgv(p, s, h, []) },
  { name: 'zdedup-limited', zdedup: true, backing: true,
    argv: (p, s, h) => zdedupArgv(p, s, h, ['--max-pool', p.pool, '--backing', join(p.dir, 'backing.img'),
      '--backing-size', p.backingSize, '--segment-size', p.segmentSize]) },
  { name: 'zdedup-tight', zdedup: true, backing: true,
    argv: (p, s, h) => zdedupArgv(p, s, h, ['--max-pool', p.pool, '--backing', join(p.dir, 'backing-tight.img'),
      '--backing-size', p.tightBackingSize ?? p.backingSize, '--segment-size', p.segmentSize]) },
];

interface Phase { lat: Lat | null; disk_loads: number | null }

interface Row {
  server: string;
  args: string;
  error: string | null;
  write_mb_s: number | null;
  /** write MB/s counting the time until the writer settled (pool back at its target) */
  write_settled_mb_s: number | null;
  settle_s: number | null;
  read_mb_s: number | null;
  verified: boolean | null;
  ram_hit: Phase;
  disk_hit: Phase;
  after_write: Stats | null;
  disk_bytes_per_logical_byte: number | null;
  rewrite_bytes: number | null;
  rewrite_s: number | null;
  clean_wait_s: number | null;
  after_rewrite: Stats | null;
  /** disk_bytes_written / record bytes appended over the rewrite and cleaning alone */
  rewrite_phase_wa: number | null;
  server_log: string;
}

/** Polls /stats until `keys` have not changed for `quietMs`, or `limitS` passed. Returns seconds waited. */
async function settle(http: string, keys: string[], quietMs: number, limitS: number, done: (s: Stats) => boolean = () => true): Promise<number> {
  const t0 = Date.now();
  let last = '';
  let since = Date.now();
  for (;;) {
    const s = await fetchStats(http);
    const sig = keys.map((k) => s[k]).join(',');
    if (sig !== last) { last = sig; since = Date.now(); }
    else if (Date.now() - since >= quietMs && done(s)) break;
    if (Date.now() - t0 > limitS * 1000) break;
    await sleep(250);
  }
  return (Date.now() - t0) / 1000;
}

/** Record bytes appended = disk_bytes_written / write_amplification (the two numbers /stats gives). */
const appended = (s: Stats): number => ((s['write_amplification'] ?? 0) > 0 ? s['disk_bytes_written']! / s['write_amplification']! : 0);

async function runServer(spec: ServerSpec, p: Params, corpus: string): Promise<Row> {
  const row: Row = {
    server: spec.name, args: '', error: null, write_mb_s: null, write_settled_mb_s: null, settle_s: null, read_mb_s: null, verified: null,
    ram_hit: { lat: null, disk_loads: null }, disk_hit: { lat: null, disk_loads: null }, after_write: null,
    disk_bytes_per_logical_byte: null, rewrite_bytes: null, rewrite_s: null, clean_wait_s: null, after_rewrite: null,
    rewrite_phase_wa: null, server_log: '',
  };
  const socket = join(p.dir, `${spec.name}.sock`);
  rmSync(socket, { force: true });
  if (spec.name === 'nbdkit-file') {
    const f = join(p.dir, 'nbdkit-file.img');
    rmSync(f, { force: true });
    writeFileSync(f, '');
    execFileSync('truncate', ['-s', String(p.dataBytes), f]);
  }
  const http = `127.0.0.1:${await freePort()}`;
  const [cmd, args] = spec.argv(p, socket, http);
  row.args = [cmd === process.execPath ? 'node' : cmd, ...args].join(' ').replace(REPO, '');
  const { child, log } = spawnServer(cmd, args, 4000);
  const uri = `nbd+unix:///?socket=${socket}`;
  const out = join('/dev/shm', `zdedup-bench-tier-${process.pid}.out`);
  const fioOut = join(p.dir, `${spec.name}.fio.json`);
  const stats = spec.zdedup ? () => fetchStats(http) : null;
  const say = (s: string): void => { process.stderr.write(s); };
  try {
    await waitListening(socket, child, log, 800);
    // the HTTP side may start listening a little after the NBD socket
    for (let i = 0; stats; i++) {
      try { await stats(); break; } catch (e) { if (i >= 80) throw e; await sleep(50); }
    }

    // write
    const wS = await run('nbdcopy', [corpus, uri]);
    row.write_mb_s = p.dataBytes / 1e6 / wS;
    say(`write ${row.write_mb_s.toFixed(1)} MB/s`);
    if (stats) {
      const wait = await settle(http, ['written_back_pages', 'disk_bytes_written', 'pool_total_size', 'pages_compacted'], 2000, p.settleS,
        (s) => !(s['max_pool_bytes']! > 0) || s['pool_total_size']! <= s['max_pool_bytes']!);
      // the last 2 s of the wait are the quiet period, not work
      row.settle_s = Math.max(0, wait - 2);
      row.write_settled_mb_s = p.dataBytes / 1e6 / (wS + row.settle_s);
      row.after_write = await stats();
      row.disk_bytes_per_logical_byte = row.after_write['disk_bytes_written']! / p.dataBytes;
      say(` (settled +${row.settle_s.toFixed(1)} s), disk bytes/logical ${row.disk_bytes_per_logical_byte.toFixed(3)}, ` +
        `WA ${row.after_write['write_amplification']!.toFixed(3)}`);
    }
    if (spec.name === 'nbdkit-file') dropFileCache(join(p.dir, 'nbdkit-file.img'));

    // RAM hits: the newest range; then disk hits: the oldest range
    for (const [phase, off, size] of [['ram_hit', p.dataBytes - p.ramBytes, p.ramBytes], ['disk_hit', 0, p.diskBytes]] as const) {
      // RAM hits: one unmeasured pass over the same reads first (same seed), so that pages of the
      // newest range that went straight to disk while the pool was full are promoted back into RAM
      if (phase === 'ram_hit') await fioNbdRead(uri, off, size, p.latIos, fioOut);
      const before = stats ? (await stats())['disk_loads']! : null;
      const r = await fioNbdRead(uri, off, size, p.latIos, fioOut);
      row[phase].lat = r.read;
      if (stats) row[phase].disk_loads = (await stats())['disk_loads']! - before!;
      say(`, ${phase} p50/p99 ${r.read.p50_us.toFixed(1)}/${r.read.p99_us.toFixed(1)} µs` +
        (row[phase].disk_loads !== null ? ` (${row[phase].disk_loads} disk loads / ${r.read.ios})` : ''));
    }

    // read back everything and compare
    rmSync(out, { force: true });
    const rS = await run('nbdcopy', [uri, out]);
    row.read_mb_s = p.dataBytes / 1e6 / rS;
    row.verified = filesEqual(corpus, out);
    rmSync(out, { force: true });
    say(`, read ${row.read_mb_s.toFixed(1)} MB/s, verified ${row.verified ? 'yes' : 'NO'}`);

    // rewrite a quarter of the pages, then let the cleaner run
    if (spec.backing && stats) {
      const s0 = await stats();
      const r = await fio(['--name=rewrite', '--ioengine=nbd', `--uri=${uri}`, '--rw=randwrite', '--bsrange=4k-64k', '--bs_unaligned=0',
        '--iodepth=1', `--size=${p.dataBytes}`, `--io_size=${p.dataBytes / 4}`, '--randrepeat=1', '--refill_buffers=1',
        '--buffer_compress_percentage=50', '--buffer_compress_chunk=4k'], fioOut);
      row.rewrite_bytes = r.write_bytes;
      row.clean_wait_s = await settle(http, ['cleaned_segments', 'disk_bytes_written', 'written_back_pages'], 10000, p.settleS);
      const s1 = await stats();
      row.after_rewrite = s1;
      const dApp = appended(s1) - appended(s0);
      row.rewrite_phase_wa = dApp > 0 ? (s1['disk_bytes_written']! - s0['disk_bytes_written']!) / dApp : null;
      say(`, rewrite ${(r.write_bytes / MiB).toFixed(0)} MiB: WA ${s1['write_amplification']!.toFixed(3)} ` +
        `(phase ${row.rewrite_phase_wa?.toFixed(3) ?? '-'}), cleaned ${s1['cleaned_segments']} segments`);
    }
  } catch (e) {
    row.error = (e as Error).message.split('\n')[0]!;
    if (stats) {
      try {
        const s = await stats();
        row.error += ` | /stats at failure: ${['logical_bytes', 'store_calls', 'pool_total_size', 'written_back_pages', 'pool_bypass_pages', 'disk_bytes',
          'disk_free_segments', 'disk_bytes_written', 'cleaned_segments', 'store_waits', 'reject_reclaim_fail', 'disk_write_errors', 'disk_read_errors']
          .map((k) => `${k}=${s[k]}`).join(' ')}`;
      } catch (e2) { row.error += ` | /stats unreachable: ${(e2 as Error).message}`; }
    }
  } finally {
    rmSync(out, { force: true });
    rmSync(fioOut, { force: true });
    const early = `server exited early (${child.exitCode ?? child.signalCode})`;
    const stop = await stopServer(child, 400);
    if (stop === 'killed') row.error ??= 'server did not exit on SIGTERM within 10 s';
    else if (stop === 'not-running') row.error ??= early;
    if (row.error !== null) row.error += log() ? ` | server: ${log().trim().split('\n').slice(-3).join(' / ')}` : '';
    row.server_log = log().trim().split('\n').slice(-20).join('\n');
    rmSync(socket, { force: true });
  }
  say(row.error ? ` ERROR: ${row.error}\n` : '\n');
  return row;
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

const f1 = (v: number | null | undefined): string => (v === null || v === undefined ? '-' : v.toFixed(1));
const f2 = (v: number | null | undefined): string => (v === null || v === undefined ? '-' : v.toFixed(2));
const f3 = (v: number | null | undefined): string => (v === null || v === undefined ? '-' : v.toFixed(3));
const mib = (v: number | null | undefined): string => (v === null || v === undefined ? '-' : (v / MiB).toFixed(1));
const ratio = (a: number | null | undefined, b: number | null | undefined): number | null =>
  a === null || a === undefined || b === null || b === undefined || b === 0 ? null : a / b;

interface Goal { goal: string; value: number | null; target: string; held: boolean | null; detail: string }

function goals(rows: Row[], raw: Lat | null): Goal[] {
  const get = (n: string): Row | undefined => rows.find((r) => r.server === n && r.error === null);
  const lim = get('zdedup-limited');
  const unb = get('zdedup-unbounded');
  const tight = get('zdedup-tight');
  const out: Goal[] = [];
  const add = (goal: string, value: number | null, target: string, ok: (v: number) => boolean, detail: string): void => {
    out.push({ goal, value, target, held: value === null ? null : ok(value), detail });
  };
  add('write MB/s, limited / unbounded', ratio(lim?.write_mb_s, unb?.write_mb_s), '>= 0.6', (v) => v >= 0.6,
    `${f1(lim?.write_mb_s)} / ${f1(unb?.write_mb_s)} MB/s (counting the writer's settle time: ${f1(lim?.write_settled_mb_s)} MB/s, ratio ${f2(ratio(lim?.write_settled_mb_s, unb?.write_mb_s))})`);
  add('disk-hit p99, limited / raw fio p99', ratio(lim?.disk_hit.lat?.p99_us, raw?.p99_us), '<= 2', (v) => v <= 2,
    `${f1(lim?.disk_hit.lat?.p99_us)} / ${f1(raw?.p99_us)} µs; ${lim?.disk_hit.disk_loads ?? '-'} disk loads in ${lim?.disk_hit.lat?.ios ?? '-'} reads`);
  add('RAM-hit p99, limited / unbounded', ratio(lim?.ram_hit.lat?.p99_us, unb?.ram_hit.lat?.p99_us), '<= 1.1', (v) => v <= 1.1,
    `${f1(lim?.ram_hit.lat?.p99_us)} / ${f1(unb?.ram_hit.lat?.p99_us)} µs; ${lim?.ram_hit.disk_loads ?? '-'} disk loads in ${lim?.ram_hit.lat?.ios ?? '-'} reads`);
  for (const r of [lim, tight]) {
    if (!r?.after_rewrite) continue;
    add(`write amplification after rewriting a quarter (${r.server})`, r.after_rewrite['write_amplification'] ?? null, '<= 1.5', (v) => v <= 1.5,
      `${r.after_rewrite['cleaned_segments']} segments cleaned; over the rewrite phase alone ${f3(r.rewrite_phase_wa)}; ` +
      `disk ${mib(r.after_rewrite['disk_bytes'])} MiB used of ${mib(r.after_rewrite['backing_size'])} MiB`);
  }
  return out;
}

function table(rows: Row[], raw: Lat | null, p: Params): string {
  const lines = [
    '| server | write MB/s | settled MB/s | read MB/s | disk B / logical B | WA after write | RAM-hit p50 µs | p99 µs | disk loads | disk-hit p50 µs | p99 µs | disk loads | WA after rewrite | cleaned segs | verified |',
    '|' + '---|'.repeat(15),
  ];
  if (raw) lines.push(`| raw-fio (psync, direct=1) | - | - | - | - | - | - | - | - | ${f1(raw.p50_us)} | ${f1(raw.p99_us)} | - | - | - | - |`);
  for (const r of rows) {
    const a = r.after_write;
    const b = r.after_rewrite;
    lines.push(`| ${r.server} | ${f1(r.write_mb_s)} | ${f1(r.write_settled_mb_s)} | ${f1(r.read_mb_s)} | ${f3(r.disk_bytes_per_logical_byte)} | ` +
      `${f3(a?.['write_amplification'])} | ${f1(r.ram_hit.lat?.p50_us)} | ${f1(r.ram_hit.lat?.p99_us)} | ${r.ram_hit.disk_loads ?? '-'} | ` +
      `${f1(r.disk_hit.lat?.p50_us)} | ${f1(r.disk_hit.lat?.p99_us)} | ${r.disk_hit.disk_loads ?? '-'} | ${f3(b?.['write_amplification'])} | ` +
      `${b?.['cleaned_segments'] ?? '-'} | ${r.error !== null ? `ERROR: ${r.error.replace(/\|/g, '/')}` : r.verified ? 'yes' : 'NO'} |`);
  }
  void p;
  return lines.join('\n');
}

function storeTable(rows: Row[]): string {
  const keys = ['logical_bytes', 'pool_total_size', 'compressed_bytes', 'written_back_pages', 'pool_bypass_pages', 'pool_limit_hit', 'promoted_pages',
    'disk_objects', 'disk_bytes', 'disk_live_bytes', 'disk_segments', 'disk_free_segments', 'disk_bytes_written', 'write_amplification',
    'cleaned_segments', 'disk_loads', 'store_waits', 'reject_reclaim_fail', 'disk_write_errors', 'disk_read_errors', 'decompress_fail'];
  const cols: Array<[string, Stats]> = [];
  for (const r of rows) {
    if (r.after_write) cols.push([`${r.server} after write`, r.after_write]);
    if (r.after_rewrite) cols.push([`${r.server} after rewrite`, r.after_rewrite]);
  }
  if (cols.length === 0) return '';
  const lines = [`| /stats | ${cols.map((c) => c[0]).join(' | ')} |`, '|' + '---|'.repeat(cols.length + 1)];
  for (const k of keys) {
    lines.push(`| ${k} | ${cols.map(([, s]) => {
      const v = s[k];
      if (v === undefined) return '-';
      return /bytes|size/.test(k) ? `${mib(v)} MiB` : Number.isInteger(v) ? String(v) : v.toFixed(3);
    }).join(' | ')} |`);
  }
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      'data-mib': { type: 'string', default: '1024' },
      pool: { type: 'string', default: '256M' },
      'backing-size': { type: 'string', default: '4G' },
      'tight-backing-size': { type: 'string', default: 'auto' },
      'segment-size': { type: 'string', default: '4M' },
      codec: { type: 'string', default: 'lz4' },
      dir: { type: 'string', default: '/var/tmp/zdedup-bench-tier' },
      'lat-ios': { type: 'string', default: '20000' },
      'ram-mib': { type: 'string', default: '64' },
      'disk-mib': { type: 'string', default: '128' },
      'settle-s': { type: 'string', default: '120' },
      'step-timeout-s': { type: 'string', default: '600' },
      servers: { type: 'string', default: SERVERS.map((s) => s.name).join(',') },
      'no-raw': { type: 'boolean', default: false },
      'no-save': { type: 'boolean', default: false },
    },
  });
  const dataBytes = Number(values['data-mib']) * MiB;
  stepTimeoutS = Number(values['step-timeout-s']);
  const tightOpt = values['tight-backing-size'];
  const p: Params = {
    dataBytes, pool: values.pool, backingSize: values['backing-size'],
    // auto: sized from zdedup-limited's disk use after the first write (see main loop); 0.5x the data without it
    tightBackingSize: tightOpt === 'off' ? null : tightOpt === 'auto' ? `${Math.ceil((dataBytes * 0.5) / MiB)}M` : tightOpt,
    segmentSize: values['segment-size'], codec: values.codec, dir: values.dir, latIos: Number(values['lat-ios']),
    ramBytes: Number(values['ram-mib']) * MiB, diskBytes: Number(values['disk-mib']) * MiB, settleS: Number(values['settle-s']),
  };
  const servers = values.servers.split(',').filter((n) => !(n === 'zdedup-tight' && p.tightBackingSize === null)).map((n) => {
    const s = SERVERS.find((x) => x.name === n);
    if (!s) throw new Error(`unknown server ${n} (have ${SERVERS.map((x) => x.name).join(', ')})`);
    return s;
  });
  const missing = ['nbdcopy', 'fio', 'nbdkit'].filter((t) => toolVersion(t) === 'missing');
  if (missing.length > 0) throw new Error(`missing tools: ${missing.join(', ')} (apt-get install libnbd-bin fio nbdkit)`);
  try { execFileSync('fio', ['--enghelp=nbd'], { stdio: 'ignore' }); } catch { throw new Error('this fio has no nbd engine'); }
  mkdirSync(p.dir, { recursive: true });
  const fsType = execFileSync('stat', ['-f', '-c', '%T', p.dir], { encoding: 'utf8' }).trim();
  const fsDev = execFileSync('df', ['--output=source', p.dir], { encoding: 'utf8' }).trim().split('\n').pop()!.trim();
  if (fsType === 'tmpfs' || fsType === 'ramfs') throw new Error(`${p.dir} is on ${fsType}: the disk tier needs a real disk`);

  process.stderr.write(`bench:tier: corpus ${values['data-mib']} MiB ... `);
  const corpus = buildMixedCorpus(dataBytes / PAGE);
  execFileSync('cat', [corpus], { stdio: ['ignore', 'ignore', 'ignore'] }); // feed every server from the page cache
  process.stderr.write(`${corpus}\n`);

  const loadBefore = loadavg();
  const loads: Record<string, string> = {};
  let raw: Lat | null = null;
  let rawError: string | null = null;
  if (!values['no-raw']) {
    process.stderr.write(`bench:tier raw-fio on ${p.dir} (${fsType}, ${fsDev}) ... `);
    const f = join(p.dir, 'fio-raw.img');
    try {
      // fio lays the file out (writes it) first, so the reads hit allocated blocks, not holes
      const r = await fio(['--name=raw4k', `--filename=${f}`, `--size=${dataBytes}`, '--rw=randread', '--bs=4k', '--direct=1',
        '--ioengine=psync', '--iodepth=1', `--number_ios=${p.latIos}`, '--randrepeat=1'], join(p.dir, 'raw.fio.json'));
      raw = r.read;
      process.stderr.write(`p50/p99 ${f1(raw.p50_us)}/${f1(raw.p99_us)} µs\n`);
    } catch (e) {
      rawError = (e as Error).message;
      process.stderr.write(`error: ${rawError}\n`);
    } finally { rmSync(f, { force: true }); }
    loads['raw-fio'] = loadavg();
  }
  const rows: Row[] = [];
  for (const s of servers) {
    const lim = rows.find((r) => r.server === 'zdedup-limited')?.after_write;
    if (s.name === 'zdedup-tight' && tightOpt === 'auto' && lim) {
      // 1.25x the segments the first write filled: the rewrite's appends then run the tier below the
      // cleaner's low-water mark (max(4, segments/16) free), so cleaning has to happen, while the
      // live data (about what the first write left) still fits
      const seg = parseSize(p.segmentSize);
      p.tightBackingSize = `${(Math.ceil((lim['disk_bytes']! * 1.25) / seg) * seg) / MiB}M`;
    }
    process.stderr.write(`bench:tier ${s.name}${s.name === 'zdedup-tight' ? ` (--backing-size ${p.tightBackingSize})` : ''}: `);
    rows.push(await runServer(s, p, corpus));
    loads[s.name] = loadavg();
    for (const f of ['nbdkit-file.img', 'backing.img', 'backing-tight.img']) rmSync(join(p.dir, f), { force: true });
  }
  const loadAfter = loadavg();

  const machine = describeMachine(['nbdkit', 'libnbd-bin', 'fio']);
  const tools = { nbdkit: toolVersion('nbdkit'), nbdcopy: toolVersion('nbdcopy'), fio: toolVersion('fio') };
  const commit = zdedupCommit();
  const g = goals(rows, raw);
  const md = [
    '# Tier benchmark: bounded RAM pool + disk tier (issue 7)',
    '',
    machineMarkdown(machine),
    `zdedup ${commit}. Tools: ${tools.nbdkit}, ${tools.nbdcopy}, ${tools.fio}. Filesystem: ${p.dir} on ${fsDev} (${fsType}). ` +
    `Load average (1/5/15 min) before: ${loadBefore}; after each step: ${Object.entries(loads).map(([k, v]) => `${k} ${v}`).join('; ')}.`,
    '',
    `Data: ${values['data-mib']} MiB of mixed pages (35% JSON/log text, 30% struct-like binary, 15% incompressible, ` +
    `10% copies of recent pages, 5% same-filled, 5% zero; bench/corpora.ts generators), written once with \`nbdcopy FILE URI\` ` +
    `(MB = 10^6 bytes; nbdcopy sends zero pages as zero requests). zdedup --codec ${p.codec}; limited = \`--max-pool ${p.pool} ` +
    `--backing DIR/backing.img --backing-size ${p.backingSize} --segment-size ${p.segmentSize}\`` +
    (p.tightBackingSize ? `; tight = the same with \`--backing-size ${p.tightBackingSize}\`` +
      (tightOpt === 'auto' ? ' (1.25x the disk_bytes of zdedup-limited after the write, so that the rewrite must clean segments)' : '') : '') + '. ' +
    `"settled MB/s" also counts the time the writer needed afterwards to bring the pool back to its target. ` +
    `Latency: fio ioengine=nbd, randread, bs=4k, QD1, up to ${p.latIos} reads; RAM hit = the last ${values['ram-mib']} MiB written, ` +
    `read twice with the same seed (the first pass unmeasured: it promotes pages that bypassed the full pool), ` +
    `disk hit = the first ${values['disk-mib']} MiB written; "disk loads" = the /stats disk_loads delta over that fio run. ` +
    `raw-fio = fio on a file in the same directory, direct=1, psync, QD1, 4 KiB random reads over ${values['data-mib']} MiB. ` +
    `nbdkit-file runs with cache=none and the file's page cache dropped before the reads. ` +
    `Rewrite: fio ioengine=nbd randwrite, bsrange=4k-64k, io_size = a quarter of the data, fresh 50%-compressible buffers; ` +
    `then /stats polled until cleaned_segments and disk_bytes_written had not changed for 10 s (at most ${p.settleS} s). ` +
    `WA = /stats write_amplification (disk bytes written / record bytes appended, cumulative); ` +
    `disk B / logical B = disk_bytes_written after the first write / bytes written.`,
    '',
    table(rows, raw, p),
    ...(rawError ? ['', `raw-fio error: ${rawError}`] : []),
    '',
    '## Targets (issue 7)',
    '',
    '| ratio | value | target | held | detail |',
    '|---|---|---|---|---|',
    ...g.map((x) => `| ${x.goal} | ${f2(x.value)} | ${x.target} | ${x.held === null ? 'NOT MEASURED' : x.held ? 'yes' : 'NO'} | ${x.detail} |`),
    '',
    '## zdedup /stats',
    '',
    storeTable(rows),
    '',
  ].join('\n');
  process.stdout.write(md);
  if (!values['no-save']) {
    saveResults('tier', {
      bench: 'tier', zdedup_commit: commit, machine, tools, filesystem: { dir: p.dir, type: fsType, device: fsDev }, load_before: loadBefore, load_after_step: loads,
      load_after: loadAfter, params: { ...p, data_mib: Number(values['data-mib']) }, raw_fio: raw, raw_fio_error: rawError, results: rows, goals: g,
    }, md);
  }
  if (rows.some((r) => r.verified === false)) process.exitCode = 1; // a server returned wrong data
}

main().catch((e) => {
  process.stderr.write(`bench:tier: ${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});
