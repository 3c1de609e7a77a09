/**
 * The real kernel swaps to zdedup with a bounded RAM pool and a disk tier:
 *
 *   workload (memory cgroup, limit 64 MiB, swap preferred)
 *      | writes 5 x 64 MiB of known pages: zero, same-filled, duplicate, text, random
 *      v
 *   kernel swap -> /dev/loopN (direct I/O) -> FUSE file -> nbdfuse -> unix socket
 *      -> `zdedup serve --max-pool 32M --backing <tmp>/b.img --backing-size 1G`
 *                      \______ no-swap memory cgroup _______/
 *
 * The workload's swapped-out pages (~256 MiB, ~100 MiB of them unique after compression) cannot
 * fit in the 32 MiB pool: the writer moves the coldest objects, still compressed, into the
 * backing file's segments, and the kernel's swap-ins read them back through the async load path.
 * Proves, through the stock kernel: every page the workload wrote verifies after swapping;
 * written_back_pages > 0 and disk_loads > 0 (/stats) while the pool stayed within its limit;
 * discards from the kernel release pages wherever they live; `zdedup swap off` undoes it all.
 * Same setup and cleanup as kernel-swap.test.ts (which covers the RAM-only server).
 *
 * Needs root, /dev/fuse, loop, a memory cgroup, nbdfuse, losetup, swapon, gcc: otherwise skipped,
 * saying which.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { createMemoryCgroup, detectMemoryCgroup, spawnInCgroup, type MemoryCgroup } from '../../src/frontends/swap/cgroup.js';
import { swapOffState } from '../../src/frontends/swap/attach.js';
import { listStates } from '../../src/frontends/swap/state.js';
import { fetchStats, readProcSwaps } from '../../src/frontends/swap/status.js';
import { findTool, isRoot, pidAlive, pollUntil } from '../../src/frontends/swap/system.js';

const REPO = fileURLToPath(new URL('../../../', import.meta.url));
const WORKLOAD_C = join(REPO, 'test/integration/kernel-swap-workload.c');
const LIMIT_MIB = 64;          // workload cgroup limit
const WORKLOAD_MIB = 5 * LIMIT_MIB; // >= 4x the limit must go through swap
const EXPORT_SIZE = '1G';
const SEED = 20241121;
const POOL_MIB = 32;

/** Why this machine cannot run the test, or null. */
function missingPrerequisite(): string | null {
  if (!isRoot()) return 'not root';
  if (!existsSync('/dev/fuse')) return 'no /dev/fuse';
  if (!existsSync('/dev/loop-control')) return 'no /dev/loop-control (loop module)';
  const tools = ['nbdfuse', 'fusermount3', 'losetup', 'mkswap', 'swapon', 'swapoff', 'gcc'];
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

function zdedup(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [join(REPO, 'bin/zdedup.js'), ...args], { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function exited(child: ChildProcess): Promise<number> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve(child.exitCode ?? 128);
    else child.once('exit', (code, sig) => resolve(code ?? (sig !== null ? 128 : 1)));
  });
}

const missing = missingPrerequisite();

test('the kernel swaps through zdedup with --max-pool 32M and a disk tier: every page verifies, objects go to disk and come back',
  { timeout: 15 * 60_000 }, async (t) => {
    if (missing !== null) {
      t.skip(`needs root, /dev/fuse and loop: ${missing}`);
      return;
    }
    const dir = mkdtempSync(join(tmpdir(), 'zdedup-kswap-tier-'));
    const socket = join(dir, 'zdedup.sock');
    const stateDir = join(dir, 'run');
    const port = await freePort();
    const http = `127.0.0.1:${port}`;
    const tag = `zdedup-test-tier-${process.pid}`;
    let serverCg: MemoryCgroup | null = null;
    let workCg: MemoryCgroup | null = null;
    let server: ChildProcess | null = null;
    let serverLog = '';

    // ---- cleanup: always, in dependency order (no swapoff after the server is gone) ----------
    let cleaned = false;
    const cleanup = async (): Promise<void> => {
      if (cleaned) return;
      cleaned = true;
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
        const gone = await pollUntil(() => (server!.exitCode !== null || server!.signalCode !== null ? true : null), 200, 25);
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

    // ---- the workload binary -------------------------------------------------------------------
    const workload = join(dir, 'kernel-swap-workload');
    const cc = spawnSync('gcc', ['-O2', '-Wall', '-o', workload, WORKLOAD_C], { encoding: 'utf8' });
    assert.equal(cc.status, 0, `gcc failed: ${cc.stderr}`);

    // ---- the server, in a group that cannot swap ------------------------------------------------
    serverCg = createMemoryCgroup(`${tag}-server`, { swap: 'deny' });
    const serverCmd: [string, string[]] = [process.execPath, [join(REPO, 'bin/zdedup.js'), 'serve', '--socket', socket, '--size', EXPORT_SIZE,
      '--codec', 'lz4', '--http', http, '--max-pool', `${POOL_MIB}M`, '--backing', join(dir, 'b.img'), '--backing-size', '1G']];
    server = spawnInCgroup(serverCg, serverCmd[0], serverCmd[1], { stdio: ['ignore', 'pipe', 'pipe'] });
    server.stdout!.on('data', (b: Buffer) => { serverLog = (serverLog + b.toString()).slice(-4000); });
    server.stderr!.on('data', (b: Buffer) => { serverLog = (serverLog + b.toString()).slice(-4000); });
    const up = await pollUntil(async () => {
      if (server!.exitCode !== null) return false;
      if (!existsSync(socket)) return null;
      return (await fetchStats(http, 1000)).ok ? true : null;
    }, 600, 50);
    assert.equal(up, true, `server did not come up (socket ${socket}, http ${http}): ${serverLog}`);
    assert.ok(serverCg.pids().includes(server.pid!), 'server runs in the no-swap cgroup');

    // ---- swap on ---------------------------------------------------------------------------------
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
    const before = await fetchStats(http);

    // ---- the workload: 5x its memory limit of known pages, forced through swap -----------------
    workCg = createMemoryCgroup(`${tag}-workload`, { limitBytes: LIMIT_MIB * 2 ** 20, swap: 'prefer' });
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
        const s = await fetchStats(http);
        assert.ok(s.ok, `stats while the workload sits in swap: ${s.ok ? '' : s.error}`);
        peak = s.stats;
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

    {
      assert.ok(before !== null && before.ok && peak !== null);
      const n = (s: Record<string, unknown>, k: string): number => {
        assert.equal(typeof s[k], 'number', `/stats has no number ${k}`);
        return s[k] as number;
      };
      const swappedPages = Math.floor(written.swapKiB / 4);
      t.diagnostic(`stats at peak: ${JSON.stringify(peak)}`);
      assert.ok(n(peak, 'stored_pages') >= swappedPages / 4,
        `stored_pages ${n(peak, 'stored_pages')} is far below the ${swappedPages} pages the workload had in swap`);
      assert.ok(n(peak, 'duplicate_pages') > 0, 'duplicate pages were shared');
      assert.ok(n(peak, 'same_filled_pages') > 0, 'same-filled pages were recognised');
      assert.equal(n(peak, 'max_pool_bytes'), POOL_MIB * 2 ** 20);
      assert.ok(n(peak, 'pool_total_size') <= POOL_MIB * 2 ** 20, `pool_total_size ${n(peak, 'pool_total_size')} over its limit`);
      assert.ok(n(peak, 'compressed_bytes') > 2 * POOL_MIB * 2 ** 20, `the swapped data overflows the pool (compressed_bytes ${n(peak, 'compressed_bytes')})`);
      assert.ok(n(peak, 'written_back_pages') > 0, 'objects were written back to the disk tier');
      assert.ok(n(peak, 'disk_objects') > 0 && n(peak, 'disk_segments') > 0, 'objects live in disk segments');
      const afterVerify = await fetchStats(http);
      assert.ok(afterVerify.ok);
      t.diagnostic(`stats after the workload verified: ${JSON.stringify(afterVerify.stats)}`);
      assert.ok(n(afterVerify.stats, 'disk_loads') > 0, 'swap-ins were served from the disk tier');
      assert.equal(n(afterVerify.stats, 'disk_read_errors'), 0);
      assert.equal(n(afterVerify.stats, 'decompress_fail'), 0);

      // ---- the workload is gone: the kernel frees its slots and discards them ------------------
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
      t.diagnostic(`after exit: stored_pages ${peakStored} -> ${String(after['stored_pages'])}, disk_objects ${n(peak, 'disk_objects')} -> ${String(after['disk_objects'])}`);
      assert.ok(n(after, 'disk_objects') < n(peak, 'disk_objects') / 2, 'discards released objects that lived on disk');
    }

    // ---- swap off undoes everything --------------------------------------------------------------
    const off = zdedup(['swap', 'off', '--socket', socket, '--state-dir', stateDir]);
    assert.equal(off.status, 0, `zdedup swap off failed: ${off.stderr}`);
    assert.ok(!readProcSwaps().some((s) => s.filename === device), `${device} left /proc/swaps`);
    assert.equal(listStates(stateDir).length, 0, 'state file removed');
    assert.ok(!pidAlive(nbdfusePid) || !serverCg.pids().includes(nbdfusePid), 'nbdfuse exited');
    assert.ok(server.exitCode === null, `server still serving after swap off: ${serverLog}`);
  });
