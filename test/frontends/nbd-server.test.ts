/**
 * The NBD server in this process (so the test can reach into the store): corruption surfaces as
 * EIO with the cause logged, the pool limit as ENOSPC, TCP listening, and backpressure (a client
 * that never reads its replies stops being read from, instead of growing the server's memory).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { PageStore } from '../../src/core/page-store.js';
import { Logger } from '../../src/frontends/log.js';
import { NbdServer } from '../../src/frontends/nbd/server.js';
import { RawClient, u32 } from '../integration/nbd/raw-client.js';

const PS = 4096;

describe('NBD server in-process', () => {
  const lines: string[] = [];
  const log = new Logger('info', { write: (s: string) => lines.push(s) });
  let dir: string;
  let store: PageStore;
  let server: NbdServer;
  let path: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'zdedup-inproc-'));
    path = join(dir, 's.sock');
    store = new PageStore({ pageSize: PS, codec: 'lz4', maxPoolBytes: 2 * 1024 * 1024 });
    server = new NbdServer({ store, pageSize: PS, log, exports: [{ name: '', size: 64 * 1024 * 1024 }, { name: 'small', size: 16 * PS }] });
    await server.listenUnix(path);
  });
  after(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('a corrupted object reads as EIO (simple and structured), RMW over it fails EIO, cause logged', async () => {
    const c = await RawClient.connect(path);
    await c.handshake('small');
    const page = Buffer.from('compressible text '.repeat(300).slice(0, PS));
    c.request(1, 0, 1n, BigInt(3 * PS), PS, page);
    assert.equal((await c.simpleReply())?.error, 0);
    store.corruptForTest(store.area('nbd:small'), 3);
    c.request(0, 0, 2n, BigInt(3 * PS + 10), 100);
    const r = await c.simpleReply(100);
    assert.equal(r?.error, 5, 'EIO, never wrong data');
    c.request(1, 0, 3n, BigInt(3 * PS + 1), 5, Buffer.from('hello'));
    assert.equal((await c.simpleReply())?.error, 5, 'partial write needs the old page: EIO');
    c.request(0, 0, 4n, 0n, PS);
    assert.equal((await c.simpleReply(PS))?.error, 0, 'other pages still read');
    c.destroy();

    const s = await RawClient.connect(path);
    await s.handshake('small', { structured: true });
    s.request(0, 0, 5n, BigInt(3 * PS), PS);
    const ch = await s.chunk();
    assert.equal(ch?.type, 0x8001, 'structured ERROR chunk');
    assert.equal(ch?.payload.readUInt32BE(0), 5);
    assert.equal(ch?.cookie, 5n);
    s.request(1, 0, 6n, BigInt(3 * PS), PS, Buffer.alloc(PS, 0x33)); // a whole-page write needs no old data
    assert.equal((await s.simpleReply())?.error, 0, 'non-READ replies stay simple with SR');
    s.request(0, 0, 7n, BigInt(3 * PS), 8);
    const ok = await s.chunk();
    assert.equal(ok?.type, 1);
    assert.deepEqual(ok?.payload.subarray(8), Buffer.alloc(8, 0x33), 'the page is readable again');
    s.destroy();
    const logged = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.msg === 'request failed');
    assert.ok(logged.length >= 2, 'failures logged');
    assert.equal((logged[0]!.cause as { code: string }).code, 'ERR_DECOMPRESS', 'the real cause is in the log');
    assert.equal(logged[0]!.errno, 'EIO');
  });

  test('writes beyond --max-pool fail with ENOSPC; the data already stored stays readable', async () => {
    const c = await RawClient.connect(path);
    await c.handshake('');
    let cookie = 100n;
    let error = 0;
    let pages = 0;
    let firstPage: Buffer | undefined;
    for (; pages < 16384 && error === 0; pages++) {
      const p = randomBytes(PS); // incompressible: each page costs a full page of pool
      firstPage ??= p;
      c.request(1, 0, cookie, BigInt(pages * PS), PS, p);
      const r = await c.simpleReply();
      assert.equal(r?.cookie, cookie++);
      error = r!.error;
    }
    assert.equal(error, 28, 'ENOSPC once the pool limit is hit');
    assert.ok(pages > 10, 'some pages fitted');
    assert.ok(store.stats().pool_limit_hit > 0);
    c.request(0, 0, 1n, 0n, PS);
    const first = await c.simpleReply(PS);
    assert.equal(first?.error, 0);
    assert.deepEqual(first?.data, firstPage, 'the first page is intact');
    c.request(4, 0, 2n, 0n, 64 * 1024 * 1024); // TRIM of the whole export frees the pool
    assert.equal((await c.simpleReply())?.error, 0);
    c.request(1, 0, 3n, 0n, PS, Buffer.alloc(PS, 0x61).fill(0x62, 100));
    assert.equal((await c.simpleReply())?.error, 0, 'writes succeed again after TRIM freed the pool');
    c.destroy();
  });

  test('an EXPORT_NAME too long to buffer is a protocol error like any unknown name, logged with its own reason (found by the fuzzer)', async () => {
    for (const refusedBefore of [false, true]) {
      const pe = server.counters.protocol_errors;
      const aborted = server.counters.handshake_aborted;
      const c = await RawClient.connect(path);
      await c.greeting();
      c.write(u32(3));
      if (refusedBefore) {
        c.sendOption(11); // EXTENDED_HEADERS: ERR_UNSUP, and the refusal is remembered for the log
        assert.equal((await c.optionReply())?.type, 0x80000001);
      }
      c.sendOption(1, Buffer.alloc(64 * 1024 + 1, 0x61)); // skipped without buffering
      assert.equal(await c.read(1), null, 'the server closes without a reply (EXPORT_NAME has no error reply)');
      assert.equal(server.counters.protocol_errors - pe, 1, `counted as a protocol error (refused option before: ${refusedBefore})`);
      assert.equal(server.counters.handshake_aborted - aborted, 0, 'not as a client that aborted');
      const why = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.msg === 'protocol error, disconnecting').at(-1)?.why;
      assert.match(String(why), /EXPORT_NAME/, 'the reason logged is this option\'s, not the previous refusal\'s');
    }
  });

  test('TCP listener on 127.0.0.1', async () => {
    const port = await server.listenTcp('127.0.0.1', 0);
    const sock = net.connect(port, '127.0.0.1');
    const greeting = await new Promise<Buffer>((resolve) => sock.once('data', resolve));
    assert.equal(greeting.subarray(0, 8).toString('latin1'), 'NBDMAGIC');
    sock.destroy();
  });

  test('a client that half-closes after pipelining requests still gets every reply', async () => {
    const c = await RawClient.connect(path);
    await c.handshake('');
    for (let i = 0; i < 12; i++) c.request(0, 0, BigInt(i), BigInt(i * 1024 * 1024), 1024 * 1024); // 12 MiB of replies
    c.end(); // FIN right behind the requests
    for (let i = 0; i < 12; i++) {
      const r = await c.simpleReply(1024 * 1024);
      assert.equal(r?.cookie, BigInt(i), `reply ${i} arrived`);
      assert.equal(r?.error, 0);
    }
    // Then the server closes, with nothing after the last reply. (closedByServer() resolves only
    // to true, so asserting it proved nothing and a server that never closed hung the test.)
    const after = await Promise.race([c.read(1), new Promise<'open'>((r) => setTimeout(() => r('open'), 5000))]);
    assert.equal(after, null, 'the server closes after the last reply, sending nothing more');
  });

  test('backpressure: a client that does not read its replies is no longer read from', async () => {
    const c = await RawClient.connect(path);
    await c.handshake('');
    c.sock.pause(); // never read replies
    const req = Buffer.alloc(28);
    req.writeUInt32BE(0x25609513, 0);
    req.writeUInt16BE(0, 6);
    req.writeUInt32BE(32 * 1024 * 1024, 24);
    // 64 reads of 32 MiB = 2 GiB of replies if the server did not stop reading.
    const many = Buffer.concat(Array.from({ length: 64 }, () => req));
    const base = server.counters.requests[0]!;
    c.sock.write(many);
    // All 64 requests arrive in one socket read and are parsed in one synchronous pass; without
    // backpressure the counter would jump by 64 at once. With it, the pass stops after the first
    // 32 MiB reply (more than the 4 MiB output high-water mark).
    while (server.counters.requests[0]! === base) await new Promise((r) => setImmediate(r));
    assert.equal(server.counters.requests[0]! - base, 1, 'parser stopped after the first reply filled the output');
    c.destroy();
  });
});
