/**
 * `zdedup swap` refuses clearly and leaves nothing behind.
 *
 * The happy path runs against the real kernel in kernel-swap.test.ts; this file covers the edges:
 * no root, no server, nothing to detach, a server that is not NBD (attach fails midway, and the
 * steps already done are undone), and the /proc/swaps and URI helpers the command relies on.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { nbdUnixUri } from '../../src/frontends/swap/attach.js';
import { readProcSwaps, statsUrl } from '../../src/frontends/swap/status.js';
import { findTool, isRoot } from '../../src/frontends/swap/system.js';

const REPO = fileURLToPath(new URL('../../../', import.meta.url));

function zdedup(args: string[], asNobody = false): { status: number | null; stdout: string; stderr: string } {
  const cmd = asNobody ? 'setpriv' : process.execPath;
  const argv = asNobody
    ? ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, join(REPO, 'bin/zdedup.js'), ...args]
    : [join(REPO, 'bin/zdedup.js'), ...args];
  const r = spawnSync(cmd, argv, { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}


/** Why the nbdfuse + loop attach path cannot run here, or null when it can. */
function attachSkipReason(): string | null {
  if (!isRoot()) return 'not root';
  if (!existsSync('/dev/fuse')) return 'no /dev/fuse';
  if (!existsSync('/dev/loop-control')) return 'no loop';
  const missing = ['nbdfuse', 'fusermount3', 'losetup', 'mkswap', 'swapon'].find((x) => findTool(x) === null);
  return missing === undefined ? null : `${missing} not installed`;
}

test('readProcSwaps parses sizes in KiB and priorities, skipping the header', () => {
  const text = 'Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n' +
    '/dev/loop0                              partition\t1048572\t\t4096\t\t32767\n' +
    '/swap\\040file                           file\t\t2097148\t\t0\t\t-2\n';
  assert.deepEqual(readProcSwaps(text), [
    { filename: '/dev/loop0', type: 'partition', size_bytes: 1048572 * 1024, used_bytes: 4096 * 1024, priority: 32767 },
    { filename: '/swap file', type: 'file', size_bytes: 2097148 * 1024, used_bytes: 0, priority: -2 },
  ]);
});

test('the nbdfuse URI carries the export name and socket percent-encoded', () => {
  assert.equal(nbdUnixUri('/run/zdedup/zdedup.sock', ''), 'nbd+unix:///?socket=%2Frun%2Fzdedup%2Fzdedup.sock');
  assert.equal(nbdUnixUri('/tmp/a b.sock', 'vm 1/x'), 'nbd+unix:///vm%201%2Fx?socket=%2Ftmp%2Fa%20b.sock');
});

test('statsUrl accepts ADDR:PORT, :PORT, PORT and URLs', () => {
  assert.equal(statsUrl('127.0.0.1:10810'), 'http://127.0.0.1:10810/stats');
  assert.equal(statsUrl(':10810'), 'http://127.0.0.1:10810/stats');
  assert.equal(statsUrl('10810'), 'http://127.0.0.1:10810/stats');
  assert.equal(statsUrl('http://[::1]:9/x'), 'http://[::1]:9/stats');
});

test('swap on/off without root fail with ERR_NOT_ROOT', (t) => {
  if (!isRoot() || findTool('setpriv') === null) {
    t.skip('needs root (to drop to nobody) and setpriv');
    return;
  }
  for (const sub of ['on', 'off']) {
    const r = zdedup(['swap', sub, '--socket', '/nonexistent.sock', '--state-dir', '/nonexistent'], true);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /^zdedup: ERR_NOT_ROOT: /);
  }
});

test('swap on refuses a socket nobody serves; swap off refuses what was never attached; status says so', (t) => {
  if (!isRoot()) {
    t.skip('needs root');
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'zdedup-swapcli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const on = zdedup(['swap', 'on', '--socket', join(dir, 'none.sock'), '--state-dir', dir]);
  assert.equal(on.status, 2);
  assert.match(on.stderr, /ERR_(ATTACH_FAILED|NO_ATTACH_PATH|TOOL_MISSING): /);
  const off = zdedup(['swap', 'off', '--socket', join(dir, 'none.sock'), '--state-dir', dir]);
  assert.equal(off.status, 2);
  assert.match(off.stderr, /^zdedup: ERR_NOT_ON: /);
  const st = zdedup(['swap', 'status', '--state-dir', dir]);
  assert.equal(st.status, 0);
  assert.equal(st.stdout, 'no zdedup swap attached\n');
  const js = zdedup(['swap', 'status', '--json', '--state-dir', dir]);
  assert.deepEqual(JSON.parse(js.stdout), []);
});

test('an attach that fails midway (the socket is not NBD) undoes its steps: no mount, no loop, no state', async (t) => {
  const why = attachSkipReason();
  if (why !== null) {
    t.skip(`needs root, /dev/fuse and loop: ${why}`);
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'zdedup-swapcli-'));
  const sock = join(dir, 'not-nbd.sock');
  // accepts, says something that is not NBD, hangs up: nbdfuse's handshake fails
  const srv: Server = createServer((c) => c.end('HTTP/1.0 400 not nbd\r\n\r\n'));
  await new Promise<void>((r) => srv.listen(sock, r));
  t.after(async () => {
    await new Promise<void>((r) => srv.close(() => r()));
    rmSync(dir, { recursive: true, force: true });
  });
  const loopsBefore = readdirSync('/sys/block').filter((n) => n.startsWith('loop') && existsSync(`/sys/block/${n}/loop`)).length;
  const r = spawnSync(process.execPath, [join(REPO, 'bin/zdedup.js'), 'swap', 'on', '--socket', sock, '--state-dir', join(dir, 'run'), '--method', 'nbdfuse'],
    { encoding: 'utf8' });
  assert.equal(r.status, 2, r.stdout + r.stderr);
  assert.match(r.stderr, /^zdedup: ERR_ATTACH_FAILED: nbdfuse .* did not come up/);
  assert.deepEqual(readdirSync(join(dir, 'run')), [], 'no state, pid, log or mount point left');
  assert.ok(!readFileSync('/proc/self/mountinfo', 'utf8').includes(dir), 'no FUSE mount left');
  const loopsAfter = readdirSync('/sys/block').filter((n) => n.startsWith('loop') && existsSync(`/sys/block/${n}/loop`)).length;
  assert.equal(loopsAfter, loopsBefore, 'no loop device left bound');
  assert.ok(!readProcSwaps().some((s) => s.filename.includes(dir)));
});

test('an attach that fails after the loop device is bound (export too small for mkswap) unbinds, unmounts and stops nbdfuse', async (t) => {
  const why = attachSkipReason();
  if (why !== null) {
    t.skip(`needs root, /dev/fuse and loop: ${why}`);
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'zdedup-swapcli-'));
  const sock = join(dir, 'tiny.sock');
  // 16 KiB: nbdfuse and losetup succeed, mkswap refuses (a swap area needs at least 10 pages)
  const server = spawn(process.execPath, [join(REPO, 'bin/zdedup.js'), 'serve', '--socket', sock, '--size', '16K', '--http', 'off'],
    { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  server.stderr!.on('data', (b: Buffer) => { log += b.toString(); });
  t.after(async () => {
    server.kill('SIGTERM');
    if (server.exitCode === null) await new Promise((r) => server.once('exit', r));
    rmSync(dir, { recursive: true, force: true });
  });
  for (let i = 0; i < 400 && !existsSync(sock) && server.exitCode === null; i++) await new Promise((r) => setTimeout(r, 25));
  assert.ok(existsSync(sock), `zdedup serve did not create ${sock}: ${log}`);

  const r = spawnSync(process.execPath, [join(REPO, 'bin/zdedup.js'), 'swap', 'on', '--socket', sock, '--state-dir', join(dir, 'run'), '--method', 'nbdfuse'],
    { encoding: 'utf8' });
  assert.equal(r.status, 2, r.stdout + r.stderr);
  assert.match(r.stderr, /^zdedup: ERR_ATTACH_FAILED: .*mkswap/);
  assert.deepEqual(readdirSync(join(dir, 'run')), [], 'no state, pid, log or mount point left');
  assert.ok(!readFileSync('/proc/self/mountinfo', 'utf8').includes(dir), 'FUSE file unmounted');
  const bound = readdirSync('/sys/block').filter((n) => {
    try { return readFileSync(`/sys/block/${n}/loop/backing_file`, 'utf8').includes(dir); } catch { return false; }
  });
  assert.deepEqual(bound, [], 'no loop device still bound to our FUSE file');
  const nbdfuse = spawnSync('pgrep', ['-f', `nbdfuse .*${dir}`], { encoding: 'utf8' });
  assert.equal(nbdfuse.stdout.trim(), '', 'nbdfuse exited');
  assert.equal(server.exitCode, null, `the server is unaffected: ${log}`);
});
