/**
 * Memory of a real `zdedup serve` process under clients that ask for big replies and do not read
 * them: 64 connections each sending one 32 MiB READ and reading nothing held 2.1 GB before the
 * buffer budget. Now the server's RSS (from /stats) must stay within the budget plus a margin while
 * they wait, and come back within 64 MiB of its level before the burst once they are gone.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { httpGet, startServer, type Server } from './nbd/harness.js';
import { RawClient } from './nbd/raw-client.js';

const MiB = 1024 * 1024;

async function rss(s: Server): Promise<number> {
  return (JSON.parse(await httpGet(s.http!, '/stats')) as { process: { rss_bytes: number } }).process.rss_bytes;
}
async function nbd(s: Server): Promise<Record<string, number>> {
  return (JSON.parse(await httpGet(s.http!, '/stats')) as { nbd: Record<string, number> }).nbd;
}

describe('server memory under unread replies', () => {
  test('64 connections each leaving a 32 MiB reply unread: RSS stays within the budget; it returns within 64 MiB after the burst', async () => {
    const budget = 128 * MiB;
    const s = await startServer(['--size', '64M', '--max-buffered', '128M', '--idle-timeout', '0']);
    const clients: RawClient[] = [];
    try {
      // Some data, so the READs decompress real pages.
      const w = await RawClient.connect(s.socket);
      await w.handshake('');
      for (let i = 0; i < 8; i++) {
        w.request(1, 0, BigInt(i + 1), BigInt(i * 4 * MiB), 4 * MiB, Buffer.alloc(4 * MiB, `page ${i} `));
        assert.equal((await w.simpleReply())?.error, 0);
      }
      w.destroy();
      await new Promise((r) => setTimeout(r, 500));
      const before = await rss(s);
      for (let i = 0; i < 64; i++) {
        const c = await RawClient.connect(s.socket);
        await c.handshake('');
        c.sock.pause();
        c.request(0, 0, BigInt(i + 1), 0n, 32 * MiB);
        clients.push(c);
      }
      let peak = 0;
      for (let i = 0; i < 20; i++) {
        peak = Math.max(peak, await rss(s));
        await new Promise((r) => setTimeout(r, 50));
      }
      const n = await nbd(s);
      assert.ok(n.buffer_waits! >= 60, `most READs wait for the budget (${n.buffer_waits})`);
      assert.ok(n.buffered_bytes! <= budget, 'the gauge stays within the budget');
      assert.ok(peak - before < budget + 96 * MiB, `RSS grew ${Math.round((peak - before) / MiB)} MiB with a ${budget / MiB} MiB budget`);
      for (const c of clients) c.destroy();
      clients.length = 0;
      let after = Infinity;
      for (let i = 0; i < 100 && after - before >= 64 * MiB; i++) {
        await new Promise((r) => setTimeout(r, 100));
        after = await rss(s);
      }
      assert.ok(after - before < 64 * MiB, `RSS back within 64 MiB of before the burst (${Math.round((after - before) / MiB)} MiB above)`);
      assert.equal((await nbd(s)).buffered_bytes, 0);
    } finally {
      for (const c of clients) c.destroy();
      assert.equal((await s.stop()).code, 0);
    }
  });
});
