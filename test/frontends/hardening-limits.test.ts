/**
 * Connection limits of the NBD server, in this process so the counters and the buffer budget can
 * be read directly: --max-connections (eviction of the oldest connection still negotiating, else
 * refusal), the handshake deadline, the idle timeout for a partial request (and no timeout for an
 * idle client between requests), 5,000 half-open connections while a well-behaved client is
 * served, and the global buffer budget under clients that do not read their 32 MiB replies.
 * Timeouts are configured short; the assertions are on what happened, never on how long it took.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import v8 from 'node:v8';
import vm from 'node:vm';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { PageStore } from '../../src/core/page-store.js';
import { Logger } from '../../src/frontends/log.js';
import { MIN_BUDGET } from '../../src/frontends/nbd/budget.js';
import { NbdServer, type NbdLimits } from '../../src/frontends/nbd/server.js';
import { RawClient } from '../integration/nbd/raw-client.js';

/** V8's full collection (exposed at run time, as the server's reclaim does). */
function fullGc(): void {
  v8.setFlagsFromString('--expose-gc');
  (vm.runInNewContext('gc') as () => void)();
}

const PS = 4096;
const MiB = 1024 * 1024;

interface Fixture { server: NbdServer; path: string; lines: Record<string, unknown>[]; done(): Promise<void> }

async function fixture(limits: Partial<NbdLimits>, exportSize = 64 * MiB): Promise<Fixture> {
  const dir = mkdtempSync(join(tmpdir(), 'zdedup-limits-'));
  const path = join(dir, 's.sock');
  const lines: Record<string, unknown>[] = [];
  const log = new Logger('info', { write: (s: string) => lines.push(JSON.parse(s) as Record<string, unknown>) });
  const store = new PageStore({ pageSize: PS, codec: 'lz4' });
  const server = new NbdServer({ store, pageSize: PS, log, limits, exports: [{ name: '', size: exportSize }] });
  await server.listenUnix(path);
  return {
    server, path, lines,
    async done() {
      await server.close(500);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Resolves when `cond` holds (polled); fails the test after `ms`. */
async function until(cond: () => boolean, what: string, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A raw unix connection whose 'close' we can await. */
function rawConnect(path: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(path);
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

/** Writes then reads back one page through `c`; returns whether it came back intact. */
async function roundTrip(c: RawClient, page: number, cookie: bigint): Promise<boolean> {
  const data = Buffer.alloc(PS, Number(cookie % 251n));
  c.request(1, 0, cookie, BigInt(page * PS), PS, data);
  const w = await c.simpleReply();
  if (w?.error !== 0) return false;
  c.request(0, 0, cookie + 1n, BigInt(page * PS), PS);
  const r = await c.simpleReply(PS);
  return r?.error === 0 && r.data.equals(data);
}

describe('NBD connection limits', () => {
  test('at --max-connections the oldest connection still negotiating is evicted; with all in transmission a new one is refused', async () => {
    const f = await fixture({ maxConnections: 3, handshakeTimeoutMs: 0, idleTimeoutMs: 0 });
    try {
      const established: RawClient[] = [];
      for (let i = 0; i < 2; i++) {
        const c = await RawClient.connect(f.path);
        await c.handshake('');
        established.push(c);
      }
      const silent = await RawClient.connect(f.path); // third: says nothing
      await silent.greeting();
      const fourth = await RawClient.connect(f.path); // admitted by evicting `silent`
      await fourth.greeting();
      assert.equal(await silent.closedByServer(), true, 'the silent connection was closed');
      assert.equal(f.server.counters.handshake_evicted, 1);
      fourth.destroy();
      await until(() => f.server.counters.connections_active === 2, 'back to the two established');
      const third = await RawClient.connect(f.path);
      await third.handshake('');
      established.push(third);
      await until(() => f.server.counters.connections_active === 3, 'three connections in transmission');
      const refused = await rawConnect(f.path);
      await new Promise<void>((r) => refused.once('close', () => r()));
      assert.equal(f.server.counters.connections_refused_limit, 1, 'refused and counted');
      for (const [i, c] of established.entries()) assert.ok(await roundTrip(c, i, BigInt(10 * i + 10)), 'established connections still served');
      for (const c of established) c.destroy();
      assert.ok(f.lines.some((l) => l.msg === 'connection limit reached: refusing a connection'), 'refusal logged');
    } finally {
      await f.done();
    }
  });

  test('the handshake deadline closes a silent connection and a slow one; both counted', async () => {
    const f = await fixture({ handshakeTimeoutMs: 150, idleTimeoutMs: 0 });
    try {
      const silent = await RawClient.connect(f.path);
      await silent.greeting();
      const slow = await RawClient.connect(f.path);
      await slow.greeting();
      // Slow-loris: one byte of the client flags at a time, never finishing the option phase.
      const drip = setInterval(() => slow.write(Buffer.from([0])), 20);
      try {
        assert.equal(await silent.closedByServer(), true);
        assert.equal(await slow.closedByServer(), true);
      } finally {
        clearInterval(drip);
      }
      assert.equal(f.server.counters.handshake_timeouts, 2);
      const ok = await RawClient.connect(f.path);
      await ok.handshake('');
      await new Promise((r) => setTimeout(r, 400)); // past the deadline, in transmission: stays open
      assert.ok(await roundTrip(ok, 1, 100n), 'a connection in transmission is not subject to the deadline');
      ok.destroy();
    } finally {
      await f.done();
    }
  });

  test('the idle timeout closes a connection stuck mid-request, never one idle between requests', async () => {
    const f = await fixture({ handshakeTimeoutMs: 0, idleTimeoutMs: 150 });
    try {
      const idle = await RawClient.connect(f.path);
      await idle.handshake('');
      const stuck = await RawClient.connect(f.path);
      await stuck.handshake('');
      // Half a WRITE: header and 100 of 4096 payload bytes.
      const h = Buffer.alloc(28);
      h.writeUInt32BE(0x25609513, 0);
      h.writeUInt16BE(1, 6);
      h.writeBigUInt64BE(7n, 8);
      h.writeUInt32BE(PS, 24);
      stuck.write(Buffer.concat([h, Buffer.alloc(100)]));
      assert.equal(await stuck.closedByServer(), true);
      assert.equal(f.server.counters.idle_timeouts, 1);
      await new Promise((r) => setTimeout(r, 500));
      assert.ok(await roundTrip(idle, 2, 200n), 'the idle client is still served');
      assert.equal(f.server.counters.idle_timeouts, 1);
      idle.destroy();
    } finally {
      await f.done();
    }
  });

  test('5,000 half-open connections: the cap and the deadline close them; a well-behaved client is served throughout; memory bounded', async () => {
    const f = await fixture({ maxConnections: 64, handshakeTimeoutMs: 200, idleTimeoutMs: 0 });
    try {
      const good = await RawClient.connect(f.path);
      await good.handshake('');
      fullGc();
      const rssBefore = process.memoryUsage().rss;
      let served = 0;
      let failures = 0;
      let stop = false;
      const worker = (async () => {
        let cookie = 1000n;
        while (!stop) {
          if (await roundTrip(good, Number(cookie % 1000n), cookie)) served++;
          else failures++;
          cookie += 2n;
          await new Promise((r) => setImmediate(r));
        }
      })();
      let opened = 0;
      let closed = 0;
      let inFlight = 0;
      await new Promise<void>((resolve) => {
        const more = (): void => {
          while (opened < 5000 && inFlight < 300) {
            opened++;
            inFlight++;
            const s = net.connect(f.path);
            // Half-open: never answers the greeting; half of them send a partial client-flags word.
            if (opened % 2 === 0) s.once('connect', () => s.write(Buffer.from([0, 0])));
            s.on('error', () => { /* reset by the server */ });
            s.once('close', () => {
              inFlight--;
              closed++;
              if (closed === 5000) resolve();
              else more();
            });
            s.resume();
          }
        };
        more();
      });
      stop = true;
      await worker;
      const c = f.server.counters;
      assert.equal(failures, 0, 'every request of the well-behaved client succeeded');
      assert.ok(served > 0, 'the well-behaved client was served while the flood ran');
      assert.equal(c.handshake_evicted + c.connections_refused_limit + c.handshake_timeouts, 5000, 'every half-open connection closed by the cap or the deadline');
      await until(() => c.connections_active === 1, 'only the good client left');
      assert.ok(await roundTrip(good, 3, 99_999n), 'still served after the flood');
      // Retained memory, not garbage: the 5,000 client sockets live in this process too, and
      // whether V8 has collected them yet at this instant varied between runs (64-67 MiB).
      fullGc();
      const growth = process.memoryUsage().rss - rssBefore;
      assert.ok(growth < 64 * MiB, `RSS grew ${Math.round(growth / MiB)} MiB (clients and server in this process)`);
      good.destroy();
      const logged = f.lines.filter((l) => String(l.msg).startsWith('connection limit reached') || String(l.msg).startsWith('handshake deadline'));
      assert.ok(logged.length <= 30, `refusals are rate-limited in the log (${logged.length} lines)`);
    } finally {
      await f.done();
    }
  });

  test('the buffer budget holds with 8 clients each leaving a 32 MiB reply unread; all are answered once they read', async () => {
    const limit = MIN_BUDGET + 8 * MiB; // room for one 32 MiB reply at a time (and small ones)
    const f = await fixture({ maxBufferedBytes: limit, idleTimeoutMs: 0 }, 64 * MiB);
    try {
      const clients: RawClient[] = [];
      for (let i = 0; i < 8; i++) {
        const c = await RawClient.connect(f.path);
        await c.handshake('');
        c.sock.pause(); // reads nothing: replies pile up in the server
        clients.push(c);
      }
      let peak = 0;
      const sampler = setInterval(() => { peak = Math.max(peak, f.server.budget.inUse); }, 1);
      try {
        for (const [i, c] of clients.entries()) c.request(0, 0, BigInt(i + 1), 0n, 32 * MiB);
        await until(() => f.server.counters.buffer_waits >= 7, 'seven READs wait for the budget');
        await new Promise((r) => setTimeout(r, 100));
        assert.ok(f.server.budget.inUse <= limit, 'within the budget');
        assert.ok(f.server.budget.inUse >= 32 * MiB, 'one 32 MiB reply is held');
        // Now everybody reads: each reply arrives, complete and in order of the budget's queue.
        const replies = await Promise.all(clients.map((c) => { c.sock.resume(); return c.simpleReply(32 * MiB); }));
        for (const [i, r] of replies.entries()) {
          assert.equal(r?.error, 0);
          assert.equal(r?.cookie, BigInt(i + 1));
          assert.equal(r?.data.length, 32 * MiB);
        }
      } finally {
        clearInterval(sampler);
      }
      assert.ok(peak <= limit, `peak ${peak} within the budget ${limit}`);
      await until(() => f.server.budget.inUse === 0, 'every charge given back');
      assert.equal(f.server.counters.buffered_bytes, 0);
      for (const c of clients) c.destroy();
    } finally {
      await f.done();
    }
  });

  test('a client that closes while waiting for the budget gives nothing back twice and blocks nobody', async () => {
    const f = await fixture({ maxBufferedBytes: MIN_BUDGET, idleTimeoutMs: 0 });
    try {
      const hog = await RawClient.connect(f.path);
      await hog.handshake('');
      hog.sock.pause();
      hog.request(0, 0, 1n, 0n, 32 * MiB);
      await until(() => f.server.budget.inUse >= 32 * MiB, 'the hog holds the budget');
      const waiter = await RawClient.connect(f.path);
      await waiter.handshake('');
      waiter.request(0, 0, 2n, 0n, 32 * MiB);
      await until(() => f.server.counters.buffer_waits === 1, 'the second READ waits');
      waiter.destroy();
      hog.destroy();
      await until(() => f.server.budget.inUse === 0, 'all given back after both closed');
      const next = await RawClient.connect(f.path);
      await next.handshake('');
      next.request(0, 0, 3n, 0n, 32 * MiB);
      const r = await next.simpleReply(32 * MiB);
      assert.equal(r?.error, 0, 'a later client gets the whole budget');
      next.destroy();
      await until(() => f.server.budget.inUse === 0, 'given back again');
    } finally {
      await f.done();
    }
  });
});
