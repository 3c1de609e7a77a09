/**
 * What the NBD benchmarks (bench/nbd.ts, bench/tier.ts) share to start, reach and stop a server
 * and to check what it returned: a free HTTP port, a server process with the tail of its output
 * kept, waiting for its unix socket to accept, stopping it (SIGTERM, then SIGKILL), byte-comparing
 * files, fio's JSON report, tool versions and the load average; and saving a run's results.
 *
 * A module of helpers only: importing it runs nothing (nbd.ts and tier.ts run their benchmark
 * when imported, so neither can be the other's library).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = fileURLToPath(new URL('../../', import.meta.url));
/** The node flags bin/zdedup.js's shebang and the systemd units run the server with. */
export const SERVE_NODE_FLAGS = ['--max-semi-space-size=1', '--initial-old-space-size=64'];

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The 1, 5 and 15 minute load averages: other work on the machine skews every figure. */
export const loadavg = (): string => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

/** A server process and the last `logChars` characters of its stdout and stderr. */
export function spawnServer(cmd: string, args: string[], logChars: number): { child: ChildProcess; log: () => string } {
  let log = '';
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.on('data', (b: Buffer) => { log = (log + b.toString()).slice(-logChars); });
  child.stderr!.on('data', (b: Buffer) => { log = (log + b.toString()).slice(-logChars); });
  return { child, log: () => log };
}

const running = (child: ChildProcess): boolean => child.exitCode === null && child.signalCode === null;

/** Resolves once something accepts connections on the unix socket; polls every 25 ms, `tries` times. */
export async function waitListening(socket: string, child: ChildProcess, log: () => string, tries: number): Promise<void> {
  for (let i = 0; i < tries; i++) {
    if (!running(child)) throw new Error(`server exited (${child.exitCode ?? child.signalCode}): ${log()}`);
    if (existsSync(socket)) {
      const ok = await new Promise<boolean>((resolve) => {
        const c = connect(socket);
        c.once('connect', () => { c.destroy(); resolve(true); });
        c.once('error', () => resolve(false));
      });
      if (ok) return;
    }
    await sleep(25);
  }
  throw new Error(`server did not listen on ${socket}: ${log()}`);
}

/**
 * SIGTERM, then up to `tries` x 25 ms for it to exit, then SIGKILL. Returns 'not-running' when it
 * had already exited, 'exited' when SIGTERM ended it in time, 'killed' otherwise.
 */
export async function stopServer(child: ChildProcess, tries: number): Promise<'not-running' | 'exited' | 'killed'> {
  if (!running(child)) return 'not-running';
  child.kill('SIGTERM');
  for (let i = 0; i < tries && running(child); i++) await sleep(25);
  if (!running(child)) return 'exited';
  child.kill('SIGKILL');
  return 'killed';
}

export function filesEqual(a: string, b: string): boolean {
  if (statSync(a).size !== statSync(b).size) return false;
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  const ba = Buffer.alloc(16 << 20);
  const bb = Buffer.alloc(16 << 20);
  try {
    for (let off = 0; ; off += ba.length) {
      const na = readSync(fa, ba, 0, ba.length, off);
      const nb = readSync(fb, bb, 0, bb.length, off);
      if (na !== nb) return false;
      if (na === 0) return true;
      if (ba.compare(bb, 0, nb, 0, na) !== 0) return false;
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

/** Completion latency of a fio job's reads, in µs. */
export interface Lat { p50_us: number; p99_us: number; p999_us: number; mean_us: number; ios: number }

/** Reads (and removes) the JSON report fio wrote to `out` (--output-format=json): the first job's reads and bytes written. */
export function readFioReport(out: string): { read: Lat; write_bytes: number } {
  const j = JSON.parse(readFileSync(out, 'utf8')) as { jobs: Array<{ read: { total_ios: number; clat_ns: { mean: number; percentile?: Record<string, number> } }; write: { io_bytes: number } }> };
  rmSync(out, { force: true });
  const r = j.jobs[0]!.read;
  const p = r.clat_ns.percentile ?? {};
  return {
    read: { p50_us: (p['50.000000'] ?? 0) / 1000, p99_us: (p['99.000000'] ?? 0) / 1000, p999_us: (p['99.900000'] ?? 0) / 1000, mean_us: r.clat_ns.mean / 1000, ios: r.total_ios },
    write_bytes: j.jobs[0]!.write.io_bytes,
  };
}

/** The first line of `cmd --version`, or 'missing'. */
export function toolVersion(cmd: string, args: string[] = ['--version']): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n')[0]!.trim();
  } catch {
    return 'missing';
  }
}

/** Writes bench/results/`bench`-DATE.json (`results`) and .md (`md`), and says so on stderr. */
export function saveResults(bench: string, results: object, md: string): void {
  const date = new Date().toISOString().slice(0, 10);
  const dir = join(REPO, 'bench/results');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, `${bench}-${date}.json`), JSON.stringify(results, null, 2) + '\n');
  writeFileSync(join(dir, `${bench}-${date}.md`), md);
  process.stderr.write(`bench:${bench}: wrote bench/results/${bench}-${date}.{json,md}\n`);
}
