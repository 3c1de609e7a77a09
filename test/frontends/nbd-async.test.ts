/**
 * Requests that complete later: the real in-process NbdServer with its export's read/write/zero
 * replaced by versions that do the real (RAM) work after a seeded random delay and return a
 * Promise, the way a disk tier will. Proves over raw sockets that replies come back out of order
 * with the right data for each cookie, that the in-flight bound holds, the ordering rule for
 * writes (a later READ sees the write, FLUSH waits, the payload buffer is not reused), that a
 * rejection is EIO, and that DISC, half-close, server shutdown and a vanishing client neither
 * drop replies nor break the server.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, test } from 'node:test';
import { ZdedupError } from '../../src/core/errors.js';
import { PageStore } from '../../src/core/page-store.js';
import { Logger } from '../../src/frontends/log.js';
import { MAX_IN_FLIGHT } from '../../src/frontends/nbd/connection.js';
import { LATENCY_BOUNDS } from '../../src/frontends/nbd/counters.js';
import type { NbdExport } from '../../src/frontends/nbd/export.js';
import type { WireErrno } from '../../src/frontends/nbd/protocol.js';
import { NbdServer } from '../../src/frontends/nbd/server.js';
import { RawClient } from '../integration/nbd/raw-client.js';

const PS = 4096;
const SIZE = 16 * 1024 * 1024;
const READ = 0, WRITE = 1, DISC = 2, FLUSH = 3, WRITE_ZEROES = 6;
const EIO = 5;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Seeded PRNG (mulberry32): a failing run can be repeated. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Kind = 'read' | 'write' | 'zero';

/** How the fake tier behaves, and what it saw. */
interface Tier {
  /** Milliseconds before the call does its work; negative = answer synchronously (a RAM hit). */
  delay: (kind: Kind, offset: number, length: number) => number;
  /** Reject this call (after its delay) with ERR_IO instead of doing the work. */
  fail: (kind: Kind, offset: number) => boolean;
  active: number;
  maxActive: number;
  asyncCalls: number;
  /** Completed async calls, in completion order. */
  done: { kind: Kind; offset: number }[];
}

/** Replaces the export's read/write/zero by ones that may complete later (see Tier). */
function makeTiered(e: NbdExport, seed: number): Tier {
  const rand = rng(seed);
  const tier: Tier = {
    delay: () => Math.floor(rand() * 12),
    fail: () => false,
    active: 0, maxActive: 0, asyncCalls: 0, done: [],
  };
  const read = e.read.bind(e), write = e.write.bind(e), zero = e.zero.bind(e);
  const later = <T>(kind: Kind, offset: number, ms: number, work: () => T): Promise<T> => {
    tier.asyncCalls++;
    tier.active++;
    tier.maxActive = Math.max(tier.maxActive, tier.active);
    return (async () => {
      try {
        await sleep(ms);
        if (tier.fail(kind, offset)) throw new ZdedupError('ERR_IO', `fake tier: ${kind} at ${offset} failed`);
        const v = work();
        tier.done.push({ kind, offset });
        return v;
      } finally {
        tier.active--;
      }
    })();
  };
  e.read = (offset, dst) => {
    const ms = tier.delay('read', offset, dst.length);
    return ms < 0 ? read(offset, dst) : later('read', offset, ms, () => read(offset, dst) as void);
  };
  e.write = (offset, src) => {
    const ms = tier.delay('write', offset, src.length);
    return ms < 0 ? write(offset, src) : later('write', offset, ms, () => write(offset, src) as WireErrno);
  };
  e.zero = (offset, length, noHole) => {
    const ms = tier.delay('zero', offset, length);
    return ms < 0 ? zero(offset, length, noHole) : later('zero', offset, ms, () => zero(offset, length, noHole) as WireErrno);
  };
  return tier;
}

/** Page i of the test pattern: every byte depends on the position, so a misplaced byte shows. */
function pattern(offset: number, length: number, salt = 0): Buffer {
  const b = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) {
    const p = offset + i;
    b[i] = (p * 31 + (p >>> 8) * 7 + (p >>> 16) + salt) & 0xff;
  }
  return b;
}

interface Env {
  server: NbdServer;
  path: string;
  exp: NbdExport;
  tier: Tier;
  logs: { level: string; msg: string; [k: string]: unknown }[];
  dir: string;
}

let env: Env | undefined;

/** A fresh server whose export already holds pattern(0, 4 MiB); the tier is installed after. */
async function start(seed: number): Promise<Env> {
  const dir = mkdtempSync(join(tmpdir(), 'zdedup-async-'));
  const path = join(dir, 's.sock');
  const logs: Env['logs'] = [];
  const log = new Logger('info', { write: (s: string) => logs.push(JSON.parse(s) as Env['logs'][number]) });
  const store = new PageStore({ pageSize: PS, codec: 'lz4' });
  const server = new NbdServer({ store, pageSize: PS, log, exports: [{ name: '', size: SIZE }] });
  const exp = server.findExport('')!;
  assert.equal(exp.write(0, pattern(0, 4 * 1024 * 1024)), 0);
  const tier = makeTiered(exp, seed);
  await server.listenUnix(path);
  env = { server, path, exp, tier, logs, dir };
  return env;
}

afterEach(async () => {
  if (env === undefined) return;
  await env.server.close(2000);
  rmSync(env.dir, { recursive: true, force: true });
  env = undefined;
});

/** Reads `n` simple replies of READs of `len` bytes; returns them by cookie, in arrival order. */
async function simpleReplies(c: RawClient, n: number, len: number): Promise<{ error: number; cookie: bigint; data: Buffer }[]> {
  const out = [];
  for (let i = 0; i < n; i++) {
    const r = await c.simpleReply(len);
    assert.ok(r !== null, `reply ${i} of ${n} arrived`);
    out.push(r);
  }
  return out;
}

function inversions(cookies: bigint[]): number {
  let n = 0;
  for (let i = 1; i < cookies.length; i++) if (cookies[i]! < cookies[i - 1]!) n++;
  return n;
}

describe('NBD requests that complete later', () => {
  test('pipelined READs are answered out of order, each with the data of its own cookie (simple replies)', async () => {
    const { path, tier, server } = await start(1);
    const c = await RawClient.connect(path);
    await c.handshake('');
    const N = 64, LEN = 3000;
    const tierBefore = server.counters.latency.read_tier.count;
    const offsetOf = (i: number): number => i * 61_337 + 17; // odd offsets, partial pages at both edges
    for (let i = 0; i < N; i++) c.request(READ, 0, 1000n + BigInt(i), BigInt(offsetOf(i)), LEN);
    const replies = await simpleReplies(c, N, LEN);
    const cookies = replies.map((r) => r.cookie);
    assert.deepEqual([...cookies].sort((a, b) => (a < b ? -1 : 1)), Array.from({ length: N }, (_, i) => 1000n + BigInt(i)), 'one reply per cookie');
    assert.ok(inversions(cookies) > 0, `replies came back out of order: ${cookies.slice(0, 20).join(' ')}`);
    for (const r of replies) {
      assert.equal(r.error, 0);
      const i = Number(r.cookie - 1000n);
      assert.ok(r.data.equals(pattern(offsetOf(i), LEN)), `cookie ${r.cookie} carries the data at ${offsetOf(i)}`);
    }
    assert.equal(tier.asyncCalls, N);
    assert.equal(server.counters.latency.read_tier.count - tierBefore, N, 'async reads recorded as read_tier');
    c.destroy();
  });

  test('structured replies out of order: each OFFSET_DATA chunk has its cookie, offset and bytes', async () => {
    const { path } = await start(2);
    const c = await RawClient.connect(path);
    await c.handshake('', { structured: true });
    const N = 40;
    const reqs = Array.from({ length: N }, (_, i) => ({ off: i * 99_991 + (i % 7), len: 1 + ((i * 7919) % (3 * PS)) }));
    reqs.forEach((q, i) => c.request(READ, 0, BigInt(i), BigInt(q.off), q.len));
    const seen: bigint[] = [];
    for (let k = 0; k < N; k++) {
      const ch = await c.chunk();
      assert.ok(ch !== null);
      assert.equal(ch.type, 1, 'OFFSET_DATA');
      assert.equal(ch.flags & 1, 1, 'DONE');
      const q = reqs[Number(ch.cookie)]!;
      assert.equal(Number(ch.payload.readBigUInt64BE(0)), q.off, `cookie ${ch.cookie}: offset`);
      assert.ok(ch.payload.subarray(8).equals(pattern(q.off, q.len)), `cookie ${ch.cookie}: data`);
      seen.push(ch.cookie);
    }
    assert.equal(new Set(seen).size, N, 'every cookie answered once');
    assert.ok(inversions(seen) > 0, 'out of order');
    c.destroy();
  });

  test(`at most MAX_IN_FLIGHT (${MAX_IN_FLIGHT}) requests of a connection are in the export at once`, async () => {
    const { path, tier } = await start(3);
    tier.delay = () => 5 + Math.floor(Math.random() * 10);
    const c = await RawClient.connect(path);
    await c.handshake('');
    const N = 100;
    for (let i = 0; i < N; i++) c.request(READ, 0, BigInt(i), BigInt(i * PS), PS);
    const replies = await simpleReplies(c, N, PS);
    for (const r of replies) assert.ok(r.data.equals(pattern(Number(r.cookie) * PS, PS)));
    assert.equal(tier.asyncCalls, N);
    assert.equal(tier.maxActive, MAX_IN_FLIGHT, 'the bound is reached and never exceeded');
    c.destroy();
  });

  test('a pipelined READ after an async WRITE of the same range returns the new data', async () => {
    const { path, tier } = await start(4);
    // The write takes long, the read is instant: without the ordering rule the read would overtake it.
    tier.delay = (kind) => (kind === 'write' ? 40 : 0);
    const c = await RawClient.connect(path);
    await c.handshake('');
    const off = 5 * PS + 100, len = 2 * PS;
    const fresh = Buffer.alloc(len, 0xab);
    c.request(WRITE, 0, 1n, BigInt(off), len, fresh);
    c.request(READ, 0, 2n, BigInt(off), len);
    const w = await c.simpleReply();
    assert.deepEqual([w?.cookie, w?.error], [1n, 0], 'write answered first');
    const r = await c.simpleReply(len);
    assert.equal(r?.cookie, 2n);
    assert.ok(r?.data.equals(fresh), 'the read sees the write');
    c.destroy();
  });

  test('an async WRITE payload assembled in the reused scratch buffer is not overwritten by the next WRITE', async () => {
    const { path, tier } = await start(5);
    tier.delay = (kind) => (kind === 'write' ? 30 : -1);
    const c = await RawClient.connect(path);
    await c.handshake('');
    const frame = (cookie: bigint, off: number, data: Buffer): Buffer => {
      const h = Buffer.alloc(28);
      h.writeUInt32BE(0x25609513, 0);
      h.writeUInt16BE(WRITE, 6);
      h.writeBigUInt64BE(cookie, 8);
      h.writeBigUInt64BE(BigInt(off), 16);
      h.writeUInt32BE(data.length, 24);
      return Buffer.concat([h, data]);
    };
    const a = Buffer.alloc(8 * PS, 0x11), b = Buffer.alloc(8 * PS, 0x22);
    const fa = frame(1n, 0, a), fb = frame(2n, 64 * PS, b);
    // Each payload arrives in two socket reads, so the server assembles it in payloadScratch.
    c.write(fa.subarray(0, 5000));
    await sleep(5);
    c.write(Buffer.concat([fa.subarray(5000), fb.subarray(0, 5000)]));
    await sleep(5);
    c.write(fb.subarray(5000));
    const replies = [await c.simpleReply(), await c.simpleReply()];
    assert.deepEqual(replies.map((r) => [r?.cookie, r?.error]), [[1n, 0], [2n, 0]]);
    c.request(READ, 0, 3n, 0n, a.length);
    assert.ok((await c.simpleReply(a.length))?.data.equals(a), 'the first write stored its own payload');
    c.request(READ, 0, 4n, BigInt(64 * PS), b.length);
    assert.ok((await c.simpleReply(b.length))?.data.equals(b), 'the second write stored its own payload');
    c.destroy();
  });

  test('FLUSH is answered only after every earlier WRITE and WRITE_ZEROES has completed', async () => {
    const { path, tier } = await start(6);
    const rand = rng(66);
    tier.delay = (kind) => (kind === 'read' ? -1 : 5 + Math.floor(rand() * 20));
    const c = await RawClient.connect(path);
    await c.handshake('');
    for (let i = 0; i < 5; i++) c.request(WRITE, 0, BigInt(i), BigInt(i * 3 * PS + 1), PS, Buffer.alloc(PS, 0x40 + i));
    c.request(WRITE_ZEROES, 0, 5n, BigInt(40 * PS), 3 * PS);
    c.request(FLUSH, 0, 99n, 0n, 0);
    const order: bigint[] = [];
    let writesDoneAtFlush = -1;
    for (let i = 0; i < 7; i++) {
      const r = await c.simpleReply();
      assert.equal(r?.error, 0);
      if (r!.cookie === 99n) writesDoneAtFlush = tier.done.filter((d) => d.kind !== 'read').length;
      order.push(r!.cookie);
    }
    assert.equal(order.at(-1), 99n, `FLUSH answered last: ${order.join(' ')}`);
    assert.equal(writesDoneAtFlush, 6, 'every write was applied when the FLUSH reply arrived');
    c.request(READ, 0, 7n, BigInt(40 * PS), 3 * PS);
    assert.ok((await c.simpleReply(3 * PS))?.data.equals(Buffer.alloc(3 * PS)), 'zeroes applied');
    c.destroy();
  });

  test('a rejected load or store is EIO (simple and structured), the cause is logged, the connection goes on', async () => {
    const { path, tier, logs } = await start(7);
    tier.fail = (_kind, offset) => offset === 7 * PS;
    const c = await RawClient.connect(path);
    await c.handshake('');
    c.request(READ, 0, 1n, BigInt(7 * PS), PS);
    c.request(READ, 0, 2n, BigInt(8 * PS), PS);
    const got = new Map<bigint, { error: number; data: Buffer }>();
    // The failed READ has no data: read the header, then the data only for the good one.
    for (let i = 0; i < 2; i++) {
      const r = await c.simpleReply(PS);
      got.set(r!.cookie, r!);
    }
    assert.equal(got.get(1n)?.error, EIO, 'rejected READ: EIO');
    assert.equal(got.get(2n)?.error, 0);
    assert.ok(got.get(2n)?.data.equals(pattern(8 * PS, PS)));
    c.request(WRITE, 0, 3n, BigInt(7 * PS), PS, Buffer.alloc(PS, 1));
    assert.deepEqual(await c.simpleReply().then((r) => [r?.cookie, r?.error]), [3n, EIO], 'rejected WRITE: EIO');
    c.destroy();

    const s = await RawClient.connect(path);
    await s.handshake('', { structured: true });
    s.request(READ, 0, 4n, BigInt(7 * PS), 10);
    const ch = await s.chunk();
    assert.equal(ch?.type, 0x8001, 'structured ERROR chunk');
    assert.equal(ch?.cookie, 4n);
    assert.equal(ch?.payload.readUInt32BE(0), EIO);
    s.destroy();

    const failed = logs.filter((l) => l.msg === 'request failed');
    assert.equal(failed.length, 3);
    for (const l of failed) {
      assert.equal(l.level, 'error');
      assert.equal(l.errno, 'EIO');
      assert.equal((l.cause as { code: string }).code, 'ERR_IO', 'the real cause is logged');
    }
  });

  test('DISC with requests in flight: every reply is sent, then the server closes', async () => {
    const { path, tier } = await start(8);
    tier.delay = () => 10 + Math.floor(Math.random() * 20);
    const c = await RawClient.connect(path);
    await c.handshake('');
    for (let i = 0; i < 10; i++) c.request(READ, 0, BigInt(i), BigInt(i * PS), PS);
    c.request(DISC, 0, 77n, 0n, 0);
    const replies = await simpleReplies(c, 10, PS);
    for (const r of replies) assert.ok(r.data.equals(pattern(Number(r.cookie) * PS, PS)));
    assert.equal(await c.closedByServer(), true);
  });

  test('client half-close with more requests than the bound: every reply is sent, then the server closes', async () => {
    const { path, tier } = await start(9);
    tier.delay = () => 5 + Math.floor(Math.random() * 10);
    const c = await RawClient.connect(path);
    await c.handshake('');
    const N = 3 * MAX_IN_FLIGHT + 5;
    for (let i = 0; i < N; i++) c.request(READ, 0, BigInt(i), BigInt(i * PS), PS);
    c.end();
    const replies = await simpleReplies(c, N, PS);
    assert.equal(new Set(replies.map((r) => r.cookie)).size, N);
    for (const r of replies) assert.ok(r.data.equals(pattern(Number(r.cookie) * PS, PS)));
    assert.equal(await c.closedByServer(), true);
  });

  test('server shutdown with requests in flight and queued behind the bound answers them all', async () => {
    const e = await start(10);
    e.tier.delay = () => 10 + Math.floor(Math.random() * 10);
    const c = await RawClient.connect(e.path);
    await c.handshake('');
    const N = 2 * MAX_IN_FLIGHT + 3;
    for (let i = 0; i < N; i++) c.request(READ, 0, BigInt(i), BigInt(i * PS), PS);
    while (e.tier.active === 0) await sleep(1);
    const closed = e.server.close(5000);
    const replies = await simpleReplies(c, N, PS);
    for (const r of replies) assert.ok(r.data.equals(pattern(Number(r.cookie) * PS, PS)));
    assert.equal(await c.closedByServer(), true);
    await closed;
    assert.equal(e.server.connectionCount, 0);
  });

  test('a client that vanishes with requests in flight: no crash, no error logged, the server serves on', async () => {
    const { path, tier, logs, server } = await start(11);
    const rand = rng(111);
    tier.delay = () => 5 + Math.floor(rand() * 40);
    const c = await RawClient.connect(path);
    await c.handshake('');
    for (let i = 0; i < 30; i++) c.request(READ, 0, BigInt(i), BigInt(i * PS), 64 * 1024);
    c.request(WRITE, 0, 99n, BigInt(200 * PS), PS, Buffer.alloc(PS, 5));
    while (tier.active < MAX_IN_FLIGHT) await sleep(1);
    c.destroy();
    while (server.connectionCount > 0) await sleep(1);
    assert.ok(tier.active > 0, 'requests were still in flight when the connection closed');
    while (tier.active > 0) await sleep(2);
    await sleep(20); // completions run after the close
    assert.equal(server.counters.connections_active, 0);
    assert.deepEqual(logs.filter((l) => l.level === 'error'), [], 'nothing logged as an error');

    // A second one half-closes, then vanishes before its (large) replies are sent.
    const d = await RawClient.connect(path);
    await d.handshake('');
    for (let i = 0; i < 20; i++) d.request(READ, 0, BigInt(i), BigInt(i * PS), 256 * 1024);
    d.end();
    while (tier.active === 0) await sleep(1);
    d.destroy();
    while (tier.active > 0 || server.connectionCount > 0) await sleep(2);
    await sleep(20);
    assert.deepEqual(logs.filter((l) => l.level === 'error'), [], 'still nothing logged as an error');

    const n = await RawClient.connect(path);
    await n.handshake('');
    n.request(READ, 0, 1n, BigInt(PS), PS);
    assert.ok((await n.simpleReply(PS))?.data.equals(pattern(PS, PS)), 'the server still answers');
    n.destroy();
  });

  test('latency histograms: RAM hits in read_ram, tier reads in read_tier, writes and others apart; JSON shape', async () => {
    const { path, tier, server } = await start(12);
    tier.delay = (kind, offset) => (kind === 'read' && offset >= 32 * PS ? 2 : -1);
    const c = await RawClient.connect(path);
    await c.handshake('');
    const before = server.counters.toJSON().latency as Record<string, { count: number }>;
    for (let i = 0; i < 8; i++) c.request(READ, 0, BigInt(i), BigInt(i * PS), PS); // sync
    for (let i = 0; i < 4; i++) c.request(READ, 0, BigInt(100 + i), BigInt((32 + i) * PS), PS); // async
    c.request(WRITE, 0, 200n, 0n, PS, Buffer.alloc(PS, 3));
    c.request(FLUSH, 0, 201n, 0n, 0);
    c.request(READ, 0, 202n, BigInt(SIZE), 1); // refused by validation: other
    const errors = new Map<bigint, number>();
    for (let i = 0; i < 15; i++) {
      const h = (await c.read(16))!;
      const cookie = h.readBigUInt64BE(8);
      errors.set(cookie, h.readUInt32BE(4));
      if (cookie < 200n && h.readUInt32BE(4) === 0) await c.read(PS); // READ data
    }
    assert.equal(errors.size, 15);
    assert.deepEqual([errors.get(200n), errors.get(201n), errors.get(202n)], [0, 0, 22]);
    c.destroy();
    type H = { buckets: number[]; counts: number[]; sum_seconds: number; count: number };
    const lat = server.counters.toJSON().latency as Record<string, H>;
    assert.deepEqual(Object.keys(lat), ['read_ram', 'read_tier', 'write', 'other']);
    assert.equal(lat.read_ram!.count - before.read_ram!.count, 8);
    assert.equal(lat.read_tier!.count - before.read_tier!.count, 4);
    assert.equal(lat.write!.count - before.write!.count, 1);
    assert.equal(lat.other!.count - before.other!.count, 2);
    for (const h of Object.values(lat)) {
      assert.deepEqual(h.buckets, LATENCY_BOUNDS);
      assert.equal(h.buckets[0], 10e-6);
      assert.equal(h.buckets.at(-1), 10);
      assert.ok(h.buckets.every((b, i) => i === 0 || b > h.buckets[i - 1]!), 'ascending');
      assert.equal(h.counts.length, h.buckets.length + 1, 'one overflow bucket past the last bound');
      assert.equal(h.counts.reduce((a, b) => a + b, 0), h.count);
    }
    assert.ok(lat.read_tier!.sum_seconds >= 4 * 0.0015, 'tier reads took their delay');
    const firstTier = lat.read_tier!.counts.findIndex((n) => n > 0);
    assert.ok(lat.read_tier!.buckets[firstTier]! >= 1e-3, 'a 2 ms read is not in a sub-millisecond bucket');
    assert.ok(JSON.parse(JSON.stringify(server.counters.toJSON())).latency.write.count >= 1, 'survives JSON');
  });
});
