/**
 * The rig the real-kernel swap tests share (kernel-swap.test.ts, kernel-swap-tier.test.ts):
 *
 *   workload (memory cgroup, limit 64 MiB, swap preferred)        runWorkload()
 *      v
 *   kernel swap (swapon --discard, priority 32767) -> /dev/loopN   swapOn() / swapOffChecked()
 *      -> FUSE file -> nbdfuse -> unix socket -> server            startServer()
 *                      \______ no-swap memory cgroup _______/
 *
 * startRig() makes the temporary directory, socket, state directory and HTTP address, and registers
 * the cleanup: always (success, failure, SIGINT/SIGTERM), in dependency order — workload, swapoff
 * (CLI, then in-process for what the CLI left), server, cgroups, directory — never a swapoff after
 * the server is gone. Each test keeps its own server command and its own /stats assertions.
 * Not a test file: it declares no tests.
 */
import assert from 'node:assert/strict';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { TestContext } from 'node:test';
import { createMemoryCgroup, detectMemoryCgroup, spawnInCgroup, type MemoryCgroup } from '../../src/frontends/swap/cgroup.js';
import { swapOffState } from '../../src/frontends/swap/attach.js';
import { listStates } from '../../src/frontends/swap/state.js';
import { fetchStats, readProcSwaps } from '../../src/frontends/swap/status.js';
import { findTool, isRoot, pidAlive, pollUntil } from '../../src/frontends/swap/system.js';

export const REPO = fileURLToPath(new URL('../../../', import.meta.url));
const WORKLOAD_C = join(REPO, 'test/integration/kernel-swap-workload.c');
export const LIMIT_MIB = 64;          // workload cgroup limit
const WORKLOAD_MIB = 5 * LIMIT_MIB; // >= 4x the limit must go through swap
export const EXPORT_SIZE = '1G';
const SEED = 20241121;
export const KERNEL_SWAP_TIMEOUT_MS = 15 * 60_000;

/** Why this machine cannot run the kernel swap path, or null. */
export function missingPrerequisite(extraTools: string[] = []): string | null {
  if (!isRoot()) return 'not root';
  if (!existsSync('/dev/fuse')) return 'no /dev/fuse';
  if (!existsSync('/dev/loop-control')) return 'no /dev/loop-control (loop module)';
  const tools = ['nbdfuse', 'fusermount3', 'losetup', 'mkswap', 'swapon', 'swapoff', 'gcc', ...extraTools];
  const missing = tools.filter((t) => findTool(t) === null);
  if (missing.length > 0) return `missing tools: ${missing.join(', ')}`;
  if (detectMemoryCgroup() === null) return 'no memory cgroup controller (v1 or v2)';
  return null;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

export function zdedup(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [join(REPO, 'bin/zdedup.js'), ...args], { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function exited(child: ChildProcess): Promise<number> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve(child.exitCode ?? 128);
    else child.once('exit', (code, sig) => resolve(code ?? (sig !== null ? 128 : 1)));
  });
}

/** A /stats number, asserted to be one. */
export function n(s: Record<string, unknown>, k: string): number {
  assert.equal(typeof s[k], 'number', `/stats has no number ${k}`);
  return s[k] as number;
}

export interface Rig {
  t: TestContext;
  dir: string;
  socket: string;
  stateDir: string;
  /** ADDR:PORT of the server's /stats */
  http: string;
  tag: string;
  serverCg: MemoryCgroup | null;
  workCg: MemoryCgroup | null;
  server: ChildProcess | null;
  /** the server's last 4000 characters of stdout and stderr */
  serverLog: string;
}

/** Paths, port and the always-run cleanup for one test: a directory `dirPrefix`XXXXXX, cgroups `tag`-PID-server/-workload. */
export async function startRig(t: TestContext, dirPrefix: string, tag: string): Promise<Rig> {
  const dir = mkdtempSync(join(tmpdir(), dirPrefix));
  const port = await freePort();
  const rig: Rig = {
    t, dir, socket: join(dir, 'zdedup.sock'), stateDir: join(dir, 'run'), http: `127.0.0.1:${port}`,
    tag: `${tag}-${process.pid}`,
    serverCg: null, workCg: null, server: null, serverLog: '',
  };
  const { stateDir } = rig;

  // ---- cleanup: always, in dependency order (no swapoff after the server is gone) ----------
  let cleaned = false;
  const cleanup = async (): Promise<void> => {
    if (cleaned) return;
    cleaned = true;
    const { workCg, server, serverCg } = rig;
    if (workCg !== null) { await workCg.killAll(); await workCg.remove().catch((e) => t.diagnostic(String(e))); }
    if (listStates(stateDir).length > 0) {
      const off = zdedup(['swap', 'off', '--all', '--state-dir', stateDir]);
      if (off.status !== 0) t.diagnostic(`swap off: ${off.stderr.trim()}`);
      for (const s of listStates(stateDir)) { // the CLI failed: try once more in-process
        await swapOffState(stateDir, s).catch((e) => t.diagnostic(`swap off retry: ${String(e)}`));
      }
    }
    if (server !== null && server.exitCode === null && server.signalCode === null) {
      server.kill('SIGTERM');
      const gone = await pollUntil(() => (server.exitCode !== null || server.signalCode !== null ? true : null), 200, 25);
      if (gone === null) server.kill('SIGKILL');
      await exited(server);
    }
    if (serverCg !== null) { await serverCg.killAll(); await serverCg.remove().catch((e) => t.diagnostic(String(e))); }
    rmSync(dir, { recursive: true, force: true });
  };
  const onSignal = (): void => { void cleanup().finally(() => process.exit(130)); };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  t.after(async () => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanup();
  });
  return rig;
}

/** Compiles kernel-swap-workload.c into the rig's directory; returns the binary's path. */
export function buildWorkload(rig: Rig): string {
  const workload = join(rig.dir, 'kernel-swap-workload');
  const cc = spawnSync('gcc', ['-O2', '-Wall', '-o', workload, WORKLOAD_C], { encoding: 'utf8' });
  assert.equal(cc.status, 0, `gcc failed: ${cc.stderr}`);
  return workload;
}

/**
 * Starts `cmd args` in a memory cgroup that cannot swap and waits until its socket exists and,
 * with `stats`, its /stats answers. Returns the cgroup and the server (also kept in the rig).
 */
export async function startServer(rig: Rig, cmd: string, args: string[], stats: boolean): Promise<{ serverCg: MemoryCgroup; server: ChildProcess }> {
  const { socket, http } = rig;
  const serverCg = createMemoryCgroup(`${rig.tag}-server`, { swap: 'deny' });
  rig.serverCg = serverCg;
  const server = spawnInCgroup(serverCg, cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  rig.server = server;
  server.stdout!.on('data', (b: Buffer) => { rig.serverLog = (rig.serverLog + b.toString()).slice(-4000); });
  server.stderr!.on('data', (b: Buffer) => { rig.serverLog = (rig.serverLog + b.toString()).slice(-4000); });
  const up = await pollUntil(async () => {
    if (server.exitCode !== null) return false;
    if (!existsSync(socket)) return null;
    if (!stats) return true;
    return (await fetchStats(http, 1000)).ok ? true : null;
  }, 600, 50);
  assert.equal(up, true, `server did not come up (socket ${socket}, http ${http}): ${rig.serverLog}`);
  assert.ok(serverCg.pids().includes(server.pid!), 'server runs in the no-swap cgroup');
  return { serverCg, server };
}

/** `zdedup swap on` via nbdfuse, with nbdfuse in the server's cgroup; checks /proc/swaps. */
export function swapOn(rig: Rig, serverCg: MemoryCgroup): { device: string; nbdfusePid: number } {
  const { socket, http, stateDir } = rig;
  const on = zdedup(['swap', 'on', '--socket', socket, '--http', http, '--state-dir', stateDir,
    '--method', 'nbdfuse', '--cgroup', serverCg.path]);
  assert.equal(on.status, 0, `zdedup swap on failed: ${on.stderr}`);
  const device = /swap on (\/dev\/loop\d+)/.exec(on.stdout)?.[1];
  assert.ok(device !== undefined, `swap on printed no device: ${on.stdout}`);
  const entry = readProcSwaps().find((s) => s.filename === device);
  assert.ok(entry !== undefined, `${device} is in /proc/swaps`);
  assert.equal(entry.priority, 32767);
  const nbdfusePid = listStates(stateDir)[0]?.nbdfuse?.pid;
  assert.ok(nbdfusePid !== undefined && serverCg.pids().includes(nbdfusePid), 'nbdfuse runs in the no-swap cgroup');
  return { device, nbdfusePid };
}

/**
 * The workload: 5x its memory limit of known pages, forced through swap. While it sits in swap,
 * `swap status` must show the device in use and, with `stats`, /stats is taken as the peak. Asserts
 * that every page verified and that at least 3x the limit was out at once (5x written, 1x resident).
 */
export async function runWorkload(rig: Rig, workload: string, device: string, stats: boolean):
Promise<{ written: { pages: number; swapKiB: number }; peak: Record<string, unknown> | null }> {
  const { t, http, stateDir } = rig;
  const workCg = createMemoryCgroup(`${rig.tag}-workload`, { limitBytes: LIMIT_MIB * 2 ** 20, swap: 'prefer' });
  rig.workCg = workCg;
  const work = spawnInCgroup(workCg, workload, [String(WORKLOAD_MIB), String(SEED)], { stdio: ['pipe', 'pipe', 'pipe'] });
  let workErr = '';
  work.stderr!.on('data', (b: Buffer) => { workErr = (workErr + b.toString()).slice(-4000); });
  const lines = createInterface({ input: work.stdout! });
  let written: { pages: number; swapKiB: number } | null = null;
  let verified: { pages: number; bad: number } | null = null;
  let peak: Record<string, unknown> | null = null;
  for await (const line of lines) {
    const w = /^written pages=(\d+) swap_kib=(-?\d+)/.exec(line);
    const v = /^verified pages=(\d+) bad=(\d+)/.exec(line);
    if (w) {
      written = { pages: Number(w[1]), swapKiB: Number(w[2]) };
      if (stats) {
        const s = await fetchStats(http);
        assert.ok(s.ok, `stats while the workload sits in swap: ${s.ok ? '' : s.error}`);
        peak = s.stats;
      }
      const st = zdedup(['swap', 'status', '--json', '--state-dir', stateDir]);
      assert.equal(st.status, 0, st.stderr);
      const status = JSON.parse(st.stdout) as Array<{ device: string; active: boolean; used_bytes: number }>;
      assert.equal(status[0]?.device, device);
      assert.equal(status[0]?.active, true);
      assert.ok((status[0]?.used_bytes ?? 0) > 0, 'swap status shows the device in use');
      t.diagnostic(`written: ${written.pages} pages, workload VmSwap ${written.swapKiB} KiB, swap used ${status[0]?.used_bytes} B`);
      work.stdin!.write('go\n');
    }
    if (v) verified = { pages: Number(v[1]), bad: Number(v[2]) };
  }
  const code = await exited(work);
  assert.ok(written !== null, `workload never finished writing (exit ${code}): ${workErr}`);
  assert.ok(verified !== null, `workload never verified (exit ${code}, cgroup events ${JSON.stringify(workCg.memoryEvents())}): ${workErr}`);
  assert.equal(verified.bad, 0, `pages read back wrong after swap: ${workErr}`);
  assert.equal(code, 0, workErr);
  // it really went through swap: at least 3x the limit was out at once (5x written, 1x resident)
  assert.ok(written.swapKiB >= 3 * LIMIT_MIB * 1024,
    `workload VmSwap ${written.swapKiB} KiB < 3 x its ${LIMIT_MIB} MiB limit: it did not swap`);
  return { written, peak };
}

/** At the peak the server held the swapped pages and shared the duplicate and same-filled ones. */
export function assertPeakShared(rig: Rig, peak: Record<string, unknown>, written: { swapKiB: number }): void {
  const swappedPages = Math.floor(written.swapKiB / 4);
  rig.t.diagnostic(`stats at peak: ${JSON.stringify(peak)}`);
  assert.ok(n(peak, 'stored_pages') >= swappedPages / 4,
    `stored_pages ${n(peak, 'stored_pages')} is far below the ${swappedPages} pages the workload had in swap`);
  assert.ok(n(peak, 'duplicate_pages') > 0, 'duplicate pages were shared');
  assert.ok(n(peak, 'same_filled_pages') > 0, 'same-filled pages were recognised');
}

/**
 * The workload is gone: the kernel frees its slots and discards them. Waits until stored_pages is
 * at most a tenth of the peak; returns /stats then.
 */
export async function awaitDiscards(rig: Rig, peak: Record<string, unknown>): Promise<Record<string, unknown>> {
  const { http } = rig;
  // swapon --discard: each swap cluster (2 MiB) is discarded, asynchronously, once all its
  // slots are free, hence the poll. A cluster still holding a slot (the swap header's, or
  // another process's) keeps its pages: so "at least 90% freed", not "all".
  const peakStored = n(peak, 'stored_pages');
  const after = await pollUntil(async () => {
    const s = await fetchStats(http);
    return s.ok && n(s.stats, 'stored_pages') <= peakStored / 10 ? s.stats : null;
  }, 1200, 100);
  const last = await fetchStats(http);
  assert.ok(after !== null,
    `stored_pages did not drop after the workload exited (peak ${peakStored}, now ${last.ok ? String(last.stats['stored_pages']) : last.error}): discards did not reach the store`);
  return after;
}

/** `zdedup swap off` undoes everything: device, state file, nbdfuse; the server keeps serving. */
export function swapOffChecked(rig: Rig, serverCg: MemoryCgroup, server: ChildProcess, device: string, nbdfusePid: number): void {
  const off = zdedup(['swap', 'off', '--socket', rig.socket, '--state-dir', rig.stateDir]);
  assert.equal(off.status, 0, `zdedup swap off failed: ${off.stderr}`);
  assert.ok(!readProcSwaps().some((s) => s.filename === device), `${device} left /proc/swaps`);
  assert.equal(listStates(rig.stateDir).length, 0, 'state file removed');
  assert.ok(!pidAlive(nbdfusePid) || !serverCg.pids().includes(nbdfusePid), 'nbdfuse exited');
  assert.ok(server.exitCode === null, `server still serving after swap off: ${rig.serverLog}`);
}
