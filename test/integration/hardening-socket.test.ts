/**
 * Local security of `zdedup serve` as a real process: the unix socket's mode whatever the umask,
 * --socket-mode / --socket-group, refusing unsafe directories, the start race of two servers on
 * one path (exactly one wins, the winner stays reachable), and signals (SIGUSR1 must not open the
 * inspector, SIGHUP must not kill the server, SIGTERM removes the socket).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { REPO, ZDEDUP, startServer } from './nbd/harness.js';
import { RawClient } from './nbd/raw-client.js';

const isRoot = process.getuid?.() === 0;
const NOBODY = 65534;

/** Runs `zdedup serve` expecting it to fail at start; returns its exit code and stderr. */
function serveFails(args: string[]): { code: number | null; stderr: string } {
  const r = spawnSync(process.execPath, [ZDEDUP, 'serve', '--http', 'off', ...args], { cwd: REPO, encoding: 'utf8', timeout: 30_000 });
  return { code: r.status, stderr: r.stderr };
}

/** Leaves a socket file nobody listens on (a dead server's leftover) at `path`. */
function staleSocket(path: string): void {
  const r = spawnSync('/usr/bin/python3', ['-c', 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])', path]);
  assert.equal(r.status, 0, `python3 could not leave a socket: ${r.stderr}`);
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

async function greets(path: string): Promise<boolean> {
  try {
    const c = await RawClient.connect(path);
    await c.greeting();
    c.destroy();
    return true;
  } catch {
    return false;
  }
}

describe('serve: sockets, directories and signals', () => {
  test('under umask 000 the socket is 0600 and a created directory 0700; --socket-mode/--socket-group widen them on purpose', async () => {
    const base = mkdtempSync(join(tmpdir(), 'zdedup-sock-'));
    const old = process.umask(0); // inherited by the server processes
    try {
      const path = join(base, 'new', 'z.sock');
      const s = await startServer(['--size', '1M'], { socket: path, http: false });
      try {
        assert.equal(statSync(path).mode & 0o777, 0o600, 'socket owner-only');
        assert.equal(statSync(join(base, 'new')).mode & 0o777, 0o700, 'directory created owner-only');
      } finally {
        await s.stop();
      }
      const gid = process.getgid!();
      const path2 = join(base, 'shared', 'z.sock');
      const w = await startServer(['--size', '1M', '--socket-mode', '0660', '--socket-group', String(gid)], { socket: path2, http: false });
      try {
        const st = statSync(path2);
        assert.equal(st.mode & 0o777, 0o660);
        assert.equal(st.gid, gid);
        assert.equal(statSync(join(base, 'shared')).mode & 0o777, 0o710, 'group may reach the socket, not list or write the directory');
      } finally {
        await w.stop();
      }
      const bad = serveFails(['--socket', join(base, 'x.sock'), '--socket-mode', '0044']);
      assert.equal(bad.code, 2);
      assert.match(bad.stderr, /^zdedup: ERR_INVALID_ARGUMENT: --socket-mode/);
    } finally {
      process.umask(old);
      rmSync(base, { recursive: true, force: true });
    }
  });

  test('a world- or group-writable directory is refused, and so is one owned by another user', async () => {
    const base = mkdtempSync(join(tmpdir(), 'zdedup-dir-'));
    try {
      const open = join(base, 'open');
      mkdirSync(open);
      chmodSync(open, 0o777);
      let r = serveFails(['--socket', join(open, 'z.sock')]);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /^zdedup: ERR_INVALID_ARGUMENT: socket directory .* writable by others/);
      assert.equal(existsSync(join(open, 'z.sock')), false, 'nothing created there');
      chmodSync(open, 0o770);
      r = serveFails(['--socket', join(open, 'z.sock')]);
      assert.match(r.stderr, /writable by its group/);
      const nested = join(open, 'inner');
      mkdirSync(nested, { mode: 0o700 });
      r = serveFails(['--socket', join(nested, 'z.sock')]);
      assert.match(r.stderr, /above the socket directory/, 'a writable parent is as bad');
      if (isRoot) {
        const foreign = join(base, 'foreign'); // what another user can do to /tmp/zdedup-UID
        mkdirSync(foreign, { mode: 0o700 });
        chownSync(foreign, NOBODY, NOBODY);
        r = serveFails(['--socket', join(foreign, 'z.sock')]);
        assert.equal(r.code, 2);
        assert.match(r.stderr, new RegExp(`owned by uid ${NOBODY}`));
        const sticky = join(base, 'sticky'); // sticky helps only when root owns the directory
        mkdirSync(sticky);
        chmodSync(sticky, 0o1777);
        chownSync(sticky, NOBODY, NOBODY);
        r = serveFails(['--socket', join(sticky, 'z.sock')]);
        assert.match(r.stderr, new RegExp(`owned by uid ${NOBODY}`));
      }
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  });

  test('a stale socket owned by another user is not removed', async (t) => {
    if (!isRoot) { t.skip('needs root to leave a socket owned by another user'); return; }
    const base = mkdtempSync(join(tmpdir(), 'zdedup-stale-'));
    try {
      const path = join(base, 'z.sock');
      staleSocket(path);
      chownSync(path, NOBODY, NOBODY);
      const r = serveFails(['--socket', path]);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /stale socket owned by uid 65534/);
      assert.equal(statSync(path).isSocket(), true, 'left in place');
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  });

  test('start race, 20 tries: of two servers started at once on a path holding a stale socket, exactly one wins and stays reachable', async () => {
    const base = mkdtempSync(join(tmpdir(), 'zdedup-race-'));
    try {
      for (let i = 0; i < 20; i++) {
        const path = join(base, `z${i}.sock`);
        staleSocket(path);
        const procs = [0, 1].map(() => {
          const p = spawn(process.execPath, [ZDEDUP, 'serve', '--socket', path, '--http', 'off', '--size', '1M'], { cwd: REPO, stdio: ['ignore', 'ignore', 'pipe'] });
          let err = '';
          const outcome = new Promise<'ready' | 'failed'>((resolve) => {
            p.stderr!.setEncoding('utf8').on('data', (d: string) => {
              err += d;
              if (err.includes('"msg":"ready"')) resolve('ready');
            });
            p.on('exit', () => resolve('failed'));
          });
          return { p, outcome, stderr: () => err };
        });
        const outcomes = await Promise.all(procs.map((x) => x.outcome));
        const winners = outcomes.filter((o) => o === 'ready').length;
        assert.equal(winners, 1, `try ${i}: exactly one server starts (${outcomes.join(', ')})\n${procs.map((x) => x.stderr()).join('\n')}`);
        const loser = procs[outcomes.indexOf('failed')]!;
        assert.match(loser.stderr(), /another server is listening on/);
        assert.equal(await greets(path), true, `try ${i}: the winner is reachable after the loser exited`);
        const winner = procs[outcomes.indexOf('ready')]!.p;
        const exited = new Promise((r) => winner.once('exit', r));
        winner.kill('SIGTERM');
        await exited;
        assert.equal(existsSync(path), false, 'the winner removes its socket');
        assert.equal(existsSync(`${path}.lock`), false, 'and its lock file');
      }
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  });

  test('SIGUSR1 leaves port 9229 closed, SIGHUP is ignored, SIGTERM still stops cleanly', async (t) => {
    if (await portOpen(9229)) { t.skip('something already listens on 127.0.0.1:9229'); return; }
    const s = await startServer(['--size', '1M'], { http: false });
    const lockFile = `${s.socket}.lock`;
    s.proc.kill('SIGUSR1');
    s.proc.kill('SIGHUP');
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(await portOpen(9229), false, 'no inspector');
    assert.equal(s.proc.exitCode, null, 'still running');
    assert.equal(await greets(s.socket), true, 'still serving');
    assert.ok(s.logs.some((l) => l.msg === 'SIGUSR1 ignored (the Node inspector is disabled in zdedup)'));
    assert.ok(s.logs.some((l) => l.msg === 'SIGHUP ignored (logs go to stderr; nothing to reload)'));
    s.proc.kill('SIGTERM');
    const r = await s.exited;
    assert.equal(r.code, 0);
    assert.equal(existsSync(s.socket), false, 'socket removed');
    assert.equal(existsSync(lockFile), false, 'lock file removed');
    await s.stop(); // removes the temporary directory
  });
});
