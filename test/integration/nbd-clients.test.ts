/**
 * zdedup serve driven by real NBD clients nobody here wrote (Debian's libnbd tools, nbdsh
 * scripts, qemu-io, qemu-img, nbdcopy). Each test starts its own server process on a temporary
 * unix socket. A test whose tool is missing is skipped with the tool's name, never passed.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import {
  ZDEDUP, hasPythonNbd, hasTool, httpGet, nbdshScript, run, runOk, startServer, type Server,
} from './nbd/harness.js';

const MiB = 1024 * 1024;

function skipUnless(t: { skip(msg: string): void }, ...tools: string[]): boolean {
  for (const tool of tools) {
    const ok = tool === 'python3-libnbd' ? hasPythonNbd() : hasTool(tool);
    if (!ok) {
      t.skip(`${tool} not installed`);
      return true;
    }
  }
  return false;
}

async function withServer(args: string[], fn: (s: Server) => Promise<void>): Promise<void> {
  const s = await startServer(args);
  try {
    await fn(s);
  } finally {
    const r = await s.stop();
    assert.equal(r.code, 0, `server exit code after SIGTERM (signal ${r.signal})`);
  }
}

/**
 * Writes a file of `pages` 4 KiB pages mixing what a page store meets: zero pages, duplicates of a
 * few templates, compressible text, one-word fills and random bytes.
 */
function generatePageFile(path: string, pages: number): void {
  const PS = 4096;
  const templates = Array.from({ length: 8 }, () => randomBytes(PS));
  const fd = openSync(path, 'w');
  const chunkPages = 256;
  const buf = Buffer.alloc(chunkPages * PS);
  let seed = 12345;
  const rnd = (): number => { seed = (seed * 1103515245 + 12345) >>> 0; return seed >>> 8; };
  try {
    for (let p = 0; p < pages; p += chunkPages) {
      const n = Math.min(chunkPages, pages - p);
      for (let i = 0; i < n; i++) {
        const page = buf.subarray(i * PS, (i + 1) * PS);
        switch (rnd() % 5) {
          case 0: page.fill(0); break;
          case 1: templates[rnd() % templates.length]!.copy(page); break;
          case 2: page.write(`page ${p + i} of a text file that compresses well; `.repeat(80), 'latin1'); break;
          case 3: page.fill(rnd() & 0xff); break;
          default: randomBytes(PS).copy(page);
        }
      }
      writeSync(fd, buf, 0, n * PS);
    }
  } finally {
    closeSync(fd);
  }
}

describe('NBD with real clients', () => {
  test('nbdinfo --list shows every export with its size, flags and block sizes', async (t) => {
    if (skipUnless(t, 'nbdinfo')) return;
    await withServer(['--export', ':64M', '--export', 'vm disk:16M', '--export', 'ro:1M:ro'], async (s) => {
      const r = await runOk('nbdinfo', ['--list', '--json', s.uri()]);
      const doc = JSON.parse(r.stdout) as { protocol: string; structured: boolean; exports: Record<string, unknown>[] };
      assert.equal(doc.protocol, 'newstyle-fixed');
      assert.equal(doc.structured, true);
      const byName = new Map(doc.exports.map((e) => [e['export-name'] as string, e]));
      assert.deepEqual([...byName.keys()].sort(), ['', 'ro', 'vm disk']);
      assert.equal(byName.get('')!['export-size'], 64 * MiB);
      assert.equal(byName.get('vm disk')!['export-size'], 16 * MiB);
      for (const [name, e] of byName) {
        const ro = name === 'ro';
        assert.equal(e.is_read_only, ro, `${name} read-only`);
        assert.equal(e.can_trim, !ro, `${name} can_trim`);
        assert.equal(e.can_zero, !ro, `${name} can_zero`);
        assert.equal(e.can_fast_zero, !ro, `${name} can_fast_zero`);
        for (const k of ['can_flush', 'can_fua', 'can_multi_conn', 'can_cache', 'can_df']) assert.equal(e[k], true, `${name} ${k}`);
        assert.deepEqual(e.contexts, ['base:allocation']);
        assert.equal(e.block_size_minimum, 1);
        assert.equal(e.block_size_preferred, 4096);
        assert.equal(e.block_size_maximum, 32 * MiB);
      }
      const plain = await runOk('nbdinfo', ['--list', s.uri()]);
      assert.match(plain.stdout, /export="vm disk":/);
    });
  });

  test('nbdinfo --map reports holes, zero pages and data from the store', async (t) => {
    if (skipUnless(t, 'nbdinfo', 'qemu-io')) return;
    await withServer(['--size', '8M'], async (s) => {
      await runOk('qemu-io', ['-f', 'raw', s.uri(), '-c', 'write -P 0x55 1M 64k', '-c', 'write -z 3M 128k', '-c', 'write -P 0 5M 4k']);
      const r = await runOk('nbdinfo', ['--map', '--json', s.uri()]);
      const map = JSON.parse(r.stdout) as { offset: number; length: number; type: number }[];
      const at = (off: number): number => map.find((e) => e.offset <= off && off < e.offset + e.length)!.type;
      assert.equal(at(0), 3, 'never written: hole+zero');
      assert.equal(at(1 * MiB), 0, 'written data');
      assert.equal(at(1 * MiB + 65536), 3, 'after the data: hole');
      assert.equal(at(3 * MiB), 2, 'write -z (NO_HOLE): zero, not a hole');
      assert.equal(at(5 * MiB), 2, 'a page of zero bytes is stored as a zero page');
      assert.equal(map.reduce((a, e) => a + e.length, 0), 8 * MiB, 'the map covers the export');
    });
  });

  test('nbdsh: every command and flag at odd offsets, structured and simple replies', async (t) => {
    if (skipUnless(t, 'python3-libnbd')) return;
    await withServer(['--export', 'sr:64M', '--export', 'simple:64M'], async (s) => {
      for (const [exp, sr] of [['sr', '1'], ['simple', '0']] as const) {
        const r = await nbdshScript('conformance.py', { SOCK: s.socket, EXPORT: exp, SR: sr, SEED: '7' });
        assert.equal(r.code, 0, `conformance.py SR=${sr} failed:\n${r.stdout}\n${r.stderr}`);
        const m = /^OK (\d+)$/m.exec(r.stdout);
        assert.ok(m && Number(m[1]) > 200, `conformance.py SR=${sr} ran its checks: ${r.stdout}`);
      }
      const stats = JSON.parse(await httpGet(s.http!, '/stats')) as { nbd: { requests: Record<string, number>; errors: Record<string, number> } };
      for (const cmd of ['read', 'write', 'flush', 'trim', 'cache', 'write_zeroes', 'block_status', 'disc']) {
        assert.ok(stats.nbd.requests[cmd]! > 0, `server counted ${cmd} requests`);
      }
      for (const e of ['EINVAL', 'ENOSPC']) assert.ok(stats.nbd.errors[e]! > 0, `server counted ${e} replies`);
    });
  });

  test('nbdsh: option negotiation (LIST, INFO, GO, EXPORT_NAME, meta contexts, ABORT, read-only EPERM)', async (t) => {
    if (skipUnless(t, 'python3-libnbd')) return;
    await withServer(['--export', ':64M', '--export', 'a:8M', '--export', 'ro:1M:ro'], async (s) => {
      const r = await nbdshScript('options.py', { SOCK: s.socket });
      assert.equal(r.code, 0, `options.py failed:\n${r.stdout}\n${r.stderr}`);
      assert.match(r.stdout, /^OK \d+$/m);
      const stats = JSON.parse(await httpGet(s.http!, '/stats')) as { nbd: { errors: Record<string, number>; options_refused: number } };
      assert.ok(stats.nbd.errors.EPERM! >= 3, 'EPERM counted for the read-only export');
      assert.ok(stats.nbd.options_refused >= 2, 'refused options counted');
    });
  });

  test('qemu-io read/write/discard/zero patterns at odd offsets', async (t) => {
    if (skipUnless(t, 'qemu-io')) return;
    await withServer(['--size', '16M'], async (s) => {
      const r = await runOk('qemu-io', ['-f', 'raw', s.uri(),
        '-c', 'write -P 0xab 4095 10240', '-c', 'read -P 0xab 4095 10240',
        '-c', 'read -P 0 0 4095', '-c', 'read -P 0 14335 1',
        '-c', 'write -f -P 1 0 4k', '-c', 'read -P 1 0 4k',
        '-c', 'write -P 0xcd 64k 64k', '-c', 'discard 64k 64k', '-c', 'read -P 0 64k 64k',
        '-c', 'write -P 0xee 128k 64k', '-c', 'write -z 128k 64k', '-c', 'read -P 0 128k 64k',
        '-c', 'write -P 0xee 192k 64k', '-c', 'write -z -u 192k 64k', '-c', 'read -P 0 192k 64k',
        '-c', 'write -P 7 1000001 3', '-c', 'read -P 7 1000001 3', '-c', 'read -P 0 1000004 4092',
        '-c', 'flush', '-c', 'map',
        '-c', 'aio_write -P 2 1M 1M', '-c', 'aio_write -P 3 2M 1M', '-c', 'aio_flush',
        '-c', 'read -P 2 1M 1M', '-c', 'read -P 3 2M 1M',
      ]);
      assert.doesNotMatch(r.stdout + r.stderr, /Pattern verification failed|error|fail/i, r.stdout + r.stderr);
      const bad = await run('qemu-io', ['-f', 'raw', s.uri(), '-c', 'read -P 0x99 4095 10240']);
      assert.match(bad.stdout + bad.stderr, /Pattern verification failed/, 'qemu-io notices wrong data (the check can fail)');
    });
  });

  test('qemu-img convert in and out, qemu-img compare: identical', async (t) => {
    if (skipUnless(t, 'qemu-img')) return;
    const dir = mkdtempSync(join(tmpdir(), 'zdedup-qemu-'));
    try {
      const img = join(dir, 'in.img');
      const out = join(dir, 'out.img');
      generatePageFile(img, 16384 + 3); // 64 MiB + 3 pages
      const size = (16384 + 3) * 4096;
      await withServer(['--size', String(size)], async (s) => {
        await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', img, s.uri()]);
        await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', img, s.uri()]);
        await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', s.uri(), out]);
        await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', img, out]);
        assert.ok(readFileSync(img).equals(readFileSync(out)), 'round trip is byte-identical');
        // compare must be able to fail: change one byte on the server
        await runOk('qemu-io', ['-f', 'raw', s.uri(), '-c', 'write -P 0x42 12345 1']);
        const r = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', img, s.uri()]);
        assert.equal(r.code, 1, `qemu-img compare sees the change: ${r.stdout}`);
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('nbdcopy --connections=4 --threads=4: 256 MiB of mixed pages in and out, byte-identical', async (t) => {
    if (skipUnless(t, 'nbdcopy')) return;
    const dir = mkdtempSync(join(tmpdir(), 'zdedup-nbdcopy-'));
    try {
      const img = join(dir, 'pages.img');
      const out = join(dir, 'back.img');
      const pages = 65536 + 17; // 256 MiB + 17 pages
      generatePageFile(img, pages);
      await withServer(['--size', String(pages * 4096), '--codec', 'lz4'], async (s) => {
        await runOk('nbdcopy', ['--connections=4', '--threads=4', '--flush', img, s.uri()]);
        await runOk('nbdcopy', ['--connections=4', '--threads=4', s.uri(), out]);
        const a = readFileSync(img);
        const b = readFileSync(out);
        assert.equal(b.length, a.length);
        assert.ok(a.equals(b), 'nbdcopy round trip differs');
        const st = JSON.parse(await httpGet(s.http!, '/stats')) as { store: Record<string, number>; nbd: Record<string, number> };
        assert.ok(st.store.duplicate_pages! > 0 || st.store.dedup_hits! > 0, 'duplicates were shared');
        assert.ok(st.store.same_filled_pages! > 0, 'same-filled pages were recognised');
        assert.ok(st.nbd.connections_accepted! >= 8, 'nbdcopy used several connections each way');
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('stdio mode and socket activation: libnbd starts the server itself', async (t) => {
    if (skipUnless(t, 'nbdinfo', 'python3-libnbd')) return;
    const r = await runOk('nbdinfo', ['--json', '--', '[', process.execPath, ZDEDUP, 'serve', '--stdio', '--size', '32M', ']']);
    assert.equal((JSON.parse(r.stdout) as { exports: { 'export-size': number }[] }).exports[0]!['export-size'], 32 * MiB);
    for (const how of ['connect_command', 'connect_systemd_socket_activation']) {
      const py = `
h.${how}([${JSON.stringify(process.execPath)}, ${JSON.stringify(ZDEDUP)}, 'serve', '--stdio', '--size', '8M', '--log-level', 'warn'])
h.pwrite(b'x' * 5000, 4000)
assert h.pread(5002, 3999) == b'\\0' + b'x' * 5000 + b'\\0'
assert h.get_size() == 8 * 1024 * 1024
h.shutdown()
print('OK')`;
      const res = await run('nbdsh', ['-c', py], { env: { LISTEN_FDS: undefined, LISTEN_PID: undefined } });
      assert.equal(res.code, 0, `${how}: ${res.stdout}${res.stderr}`);
      assert.match(res.stdout, /OK/);
    }
  });

  test('GET /stats and /metrics, and zdedup stats (table and --json)', async (t) => {
    if (skipUnless(t, 'qemu-io')) return;
    await withServer(['--export', 'a:8M', '--export', 'b:8M:ro'], async (s) => {
      await runOk('qemu-io', ['-f', 'raw', s.uri('a'), '-c', 'write -P 0x11 0 64k', '-c', 'write -P 0x11 64k 64k', '-c', 'read 0 4k']);
      const doc = JSON.parse(await httpGet(s.http!, '/stats')) as {
        store: Record<string, number>; exports: Record<string, unknown>[]; nbd: Record<string, unknown>;
      };
      for (const k of ['stored_pages', 'same_filled_pages', 'duplicate_pages', 'compression_ratio', 'dedup_ratio', 'pool_total_size']) {
        assert.equal(typeof doc.store[k], 'number', `store.${k}`);
      }
      assert.ok(doc.store.stored_pages! >= 32, 'the 32 written pages are counted');
      const a = doc.exports.find((e) => e.name === 'a')!;
      assert.equal(a.size, 8 * MiB);
      assert.equal(a.pages, 2048);
      assert.equal(a.data_pages, 32, 'one-word fills count as data pages (not zero)');
      assert.equal(a.zero_pages, 0);
      assert.equal(a.hole_pages, 2048 - 32);
      assert.equal(doc.exports.find((e) => e.name === 'b')!.read_only, true);
      const nbd = doc.nbd as { requests: Record<string, number>; connections_accepted: number };
      assert.equal(nbd.requests.write, 2);
      assert.ok(nbd.connections_accepted >= 1);

      const metrics = await httpGet(s.http!, '/metrics');
      assert.match(metrics, /^zdedup_stored_pages \d+$/m);
      assert.match(metrics, /^zdedup_dedup_ratio [\d.e+-]+$/m);
      assert.match(metrics, /^zdedup_nbd_requests_total\{command="write"\} 2$/m);
      assert.match(metrics, /^zdedup_export_size_bytes\{export="a"\} 8388608$/m);
      assert.match(metrics, /^# TYPE zdedup_nbd_connections_accepted_total counter$/m);

      const json = await runOk(process.execPath, [ZDEDUP, 'stats', '--json', '--http', s.http!]);
      assert.equal((JSON.parse(json.stdout) as { store: { stored_pages: number } }).store.stored_pages, doc.store.stored_pages);
      const table = await runOk(process.execPath, [ZDEDUP, 'stats', '--http', s.http!]);
      assert.match(table.stdout, /^store$/m);
      assert.match(table.stdout, /^ {2}stored_pages +\d+/m);
      assert.match(table.stdout, /^ {2}"a" +8\.00 MiB rw/m);
      assert.match(table.stdout, /write=2/);
      const env = await runOk(process.execPath, [ZDEDUP, 'stats', '--json'], { env: { ZDEDUP_HTTP: s.http! } });
      assert.ok(env.stdout.includes('"stored_pages"'), 'ZDEDUP_HTTP picks the server');
    });
    const down = await run(process.execPath, [ZDEDUP, 'stats', '--http', '127.0.0.1:1']);
    assert.equal(down.code, 2);
    assert.match(down.stderr, /no zdedup server answers/);
  });

  test('SIGTERM: the server answers what it received, removes its socket and exits 0', async (t) => {
    if (skipUnless(t, 'python3-libnbd')) return;
    const s = await startServer(['--size', '8M']);
    const py = `
import os, signal
h.connect_unix(${JSON.stringify(s.socket)})
h.pwrite(b'y' * 100000, 123)
cookies = [h.aio_pwrite(b'z' * 65536, 65536 * i) for i in range(32)]
os.kill(${s.proc.pid}, signal.SIGTERM)
pending = set(cookies)
try:
    while pending:
        h.poll(-1)
        pending = set(c for c in pending if not h.aio_command_completed(c))
except nbd.Error:
    pass    # the server may close before answering requests it had not fully received
print('OK')`;
    const r = await run('nbdsh', ['-c', py]);
    const exit = await s.exited;
    assert.equal(exit.code, 0, `exit code after SIGTERM: ${exit.code ?? exit.signal}`);
    assert.ok(!existsSync(s.socket), 'socket file removed');
    assert.ok(s.logs.some((l) => l.msg === 'stopped'), 'logged "stopped"');
    assert.match(r.stdout, /OK/, r.stderr);
    await s.stop();
  });

  test('a stale socket file is replaced; a live one is refused', async () => {
    const s = await startServer(['--size', '1M'], { http: false });
    try {
      const again = await run(process.execPath, [ZDEDUP, 'serve', '--socket', s.socket, '--http', 'off', '--size', '1M']);
      assert.equal(again.code, 2);
      assert.match(again.stderr, /another server is listening/);
    } finally {
      s.proc.kill('SIGKILL'); // leaves the socket file behind
      await s.exited;
    }
    assert.ok(existsSync(s.socket), 'SIGKILL left a stale socket');
    const dir = mkdtempSync(join(tmpdir(), 'zdedup-stale-'));
    const file = join(dir, 'not-a-socket');
    writeFileSync(file, 'keep me');
    try {
      const r = await run(process.execPath, [ZDEDUP, 'serve', '--socket', file, '--http', 'off', '--size', '1M']);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /not a socket/);
      assert.equal(readFileSync(file, 'utf8'), 'keep me');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    // a new server takes over the stale path
    const s2 = await startServer(['--size', '1M'], { http: false, socket: s.socket });
    try {
      if (hasTool('nbdinfo')) {
        const r = await runOk('nbdinfo', ['--size', s2.uri()]);
        assert.equal(r.stdout.trim(), '1048576');
      }
    } finally {
      await s2.stop();
      rmSync(s.dir, { recursive: true, force: true });
    }
  });
});
