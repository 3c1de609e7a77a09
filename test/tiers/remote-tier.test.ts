/**
 * The remote tier against a real 6-node Redis Cluster on loopback (3 masters + 3 replicas):
 * values that fail their checks are EIO, domains with other secrets share nothing, an object
 * stored under another codec reads back re-encoded, leases keep in-use objects alive (even when
 * a rollback shortened them) and collect the rest, and a cluster that goes away and comes back
 * gives ENOSPC/EIO meanwhile and then serves again without a restart.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { PageStore, type AreaId } from '../../src/core/page-store.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RemoteTier } from '../../src/tiers/remote/remote-tier.js';
import { DiskTier } from '../../src/tiers/disk/disk-tier.js';
import { PlacementTier } from '../../src/tiers/placement.js';
import { ZdedupError } from '../../src/errors.js';
import { fillRandom, makePage } from '../helpers/pages.js';
import { RedisCluster, redisCli, redisCliMany, redisMissing } from '../helpers/redis-cluster.js';

const skip = redisMissing();
let cluster: RedisCluster;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const SECRET = Buffer.from('0123456789abcdef-remote-tier-test');

before(async () => { if (!skip) cluster = await RedisCluster.start(); });
after(async () => { await cluster?.stop(); });

function remoteStore(domain: string, opts: { secret?: Buffer; codec?: string; leaseMs?: number; timeoutMs?: number } = {}): { store: PageStore; tier: RemoteTier } {
  const tier = new RemoteTier({ url: cluster.url, domain, secret: opts.secret ?? SECRET, pageSize: 4096, codec: opts.codec,
    leaseMs: opts.leaseMs ?? 60_000, timeoutMs: opts.timeoutMs ?? 1500, inflightBytes: 2 << 20 });
  // A pool of one 64 KiB arena: almost every object goes to the cluster.
  const store = new PageStore({ arenaBytes: 64 << 10, maxPoolBytes: 64 << 10, background: false, tier, codec: opts.codec });
  return { store, tier };
}

/** Stores `n` pages (random half-compressible content from `seed`) and pushes them all to the cluster. */
async function fill(store: PageStore, tier: RemoteTier, area: AreaId, n: number, seed: number): Promise<Buffer[]> {
  const pages: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const p = Buffer.alloc(4096);
    fillRandom(p.subarray(0, 2048), seed * 100_003 + i); // half random, half zero: compressible
    pages.push(p);
    assert.equal(await store.storeAsync(area, i, p), 'stored');
  }
  await store.settle();
  await tier.drain();
  return pages;
}

/** Keys of object values in the cluster (lease keys excluded). */
function objectKeys(domain: string): number {
  let n = 0;
  for (const p of cluster.masters()) {
    const out = redisCli(p, '--scan', '--pattern', `zd:${domain}:*`).split('\n').filter((l) => l !== '' && !l.endsWith(':lease'));
    n += out.length;
  }
  return n;
}

async function loadAll(store: PageStore, area: AreaId, pages: Buffer[]): Promise<void> {
  const into = Buffer.alloc(4096);
  for (let i = 0; i < pages.length; i++) {
    assert.equal(await store.loadAsync(area, i, into), 'hit');
    assert.ok(into.equals(pages[i]!), `page ${i} reads back`);
  }
}

describe('remote tier on a real Redis Cluster', { skip }, () => {
  test('objects go to the cluster, read back through async loads; the sync API refuses (EIO), never blocks', async () => {
    const { store, tier } = remoteStore('basic');
    try {
      const a = store.createArea('a', 256);
      const pages = await fill(store, tier, a, 200, 1);
      const s = store.stats();
      assert.ok(s.remote_objects >= 180, `objects in the remote tier: ${s.remote_objects}`);
      assert.equal(s.remote_stores, s.remote_objects);
      await loadAll(store, a, pages);
      assert.ok(store.stats().remote_loads > 0);
      const cold = pages.findIndex((_p, i) => store.needsTierRead(a, i));
      assert.ok(cold >= 0);
      assert.throws(() => store.load(a, cold, Buffer.alloc(4096)), (e: unknown) => e instanceof ZdedupError && e.code === 'ERR_DISK_READ');
    } finally {
      await store.close();
    }
  });

  test('a value corrupted in the cluster is an EIO (ERR_DISK_READ), never data', async () => {
    const { store, tier } = remoteStore('corrupt');
    try {
      const a = store.createArea('a', 64);
      const pages = await fill(store, tier, a, 40, 2);
      const cold = pages.findIndex((_p, i) => store.needsTierRead(a, i));
      const loc = (store as unknown as { objects: { w0: Uint32Array } }).objects; // white box: the object's location
      const slots = (store as unknown as { slotMaps: Uint32Array[] }).slotMaps[a]!;
      await tier.corruptRemoteForTest(loc.w0[slots[cold]! - 1]!);
      const into = Buffer.alloc(4096, 0xee);
      await assert.rejects(store.loadAsync(a, cold, into), (e: unknown) => e instanceof ZdedupError && e.code === 'ERR_DISK_READ');
      assert.ok(store.stats().remote_errors > 0);
      // the other pages still read back
      for (let i = 0; i < pages.length; i++) if (i !== cold) { await store.loadAsync(a, i, into); assert.ok(into.equals(pages[i]!)); }
    } finally {
      await store.close();
    }
  });

  test('same domain and secret: the second host uploads nothing; another secret shares nothing', async () => {
    const h1 = remoteStore('shared');
    const h2 = remoteStore('shared');
    const h3 = remoteStore('shared', { secret: Buffer.from('another-secret-of-32-bytes------') });
    try {
      const a1 = h1.store.createArea('a', 256), a2 = h2.store.createArea('a', 256), a3 = h3.store.createArea('a', 256);
      await fill(h1.store, h1.tier, a1, 200, 3);
      const keys1 = objectKeys('shared');
      const pages = await fill(h2.store, h2.tier, a2, 200, 3);
      const s2 = h2.store.stats();
      assert.equal(s2.remote_stores, 0, 'the second host uploaded nothing');
      assert.equal(s2.remote_dedup_hits, s2.remote_objects, 'every object was found in the cluster');
      assert.equal(objectKeys('shared'), keys1, 'no new keys');
      await loadAll(h2.store, a2, pages);
      await fill(h3.store, h3.tier, a3, 200, 3);
      const s3 = h3.store.stats();
      assert.equal(s3.remote_dedup_hits, 0, 'another secret finds nothing');
      assert.equal(s3.remote_stores, s3.remote_objects);
      assert.equal(objectKeys('shared'), keys1 + s3.remote_objects, 'another secret stores its own copy');
    } finally {
      await Promise.all([h1.store.close(), h2.store.close(), h3.store.close()]);
    }
  });

  test('content stored by a host with another codec reads back (decoded, checked against its key, re-encoded)', async () => {
    const h1 = remoteStore('codecs', { codec: 'zstd:3' });
    const h2 = remoteStore('codecs', { codec: 'lz4' });
    try {
      const a1 = h1.store.createArea('a', 64), a2 = h2.store.createArea('a', 64);
      await fill(h1.store, h1.tier, a1, 40, 4);
      const pages = await fill(h2.store, h2.tier, a2, 40, 4);
      assert.equal(h2.store.stats().remote_stores, 0, 'lz4 host found the zstd values');
      await loadAll(h2.store, a2, pages);
      assert.equal(h2.store.stats().remote_errors, 0);
    } finally {
      await Promise.all([h1.store.close(), h2.store.close()]);
    }
  });

  test('leases: objects in use survive many lease periods, even after a rollback shortened them; trimmed ones are collected within one lease', async () => {
    const LEASE = 2000;
    const h1 = remoteStore('gc', { leaseMs: LEASE });
    const h2 = remoteStore('gc', { leaseMs: LEASE });
    try {
      const a1 = h1.store.createArea('a', 128), a2 = h2.store.createArea('a', 128);
      const pages = await fill(h1.store, h1.tier, a1, 100, 5);
      await fill(h2.store, h2.tier, a2, 100, 5);
      const keys = objectKeys('gc');
      assert.ok(keys >= 90, `keys ${keys}`);
      // What a failover that lost the last renewal does: the key's expiry goes back by one renewal
      // period (lease/3). Roll every key back by that much.
      // (Batched: one redis-cli per master and step, so the renewals of this process keep running.)
      for (const p of cluster.masters()) {
        const keys = redisCli(p, '--scan', '--pattern', 'zd:gc:*').split('\n').filter((l) => l !== '' && !l.endsWith(':lease'));
        const ttls = redisCliMany(p, keys.map((k) => ['PTTL', k])).map(Number);
        redisCliMany(p, keys.map((k, i) => ['PEXPIRE', k, String(Math.max(1, ttls[i]! - Math.floor(LEASE / 3)))]));
      }
      await sleep(3 * LEASE);
      assert.equal(objectKeys('gc'), keys, 'renewals kept every object in use');
      await loadAll(h1.store, a1, pages);
      // Host 1 trims everything: host 2 still holds the objects, so they stay.
      h1.store.invalidateRange(a1, 0, 128);
      await sleep(2 * LEASE);
      assert.equal(objectKeys('gc'), keys, 'objects another host holds stay');
      await loadAll(h2.store, a2, pages);
      // Both trimmed: collected within one lease (+ Redis's active expiry).
      h2.store.invalidateRange(a2, 0, 128);
      const t0 = Date.now();
      while (objectKeys('gc') > 0 && Date.now() - t0 < LEASE + 10_000) await sleep(200);
      assert.equal(objectKeys('gc'), 0, 'every object collected');
    } finally {
      await Promise.all([h1.store.close(), h2.store.close()]);
    }
  });

  test('remote + disk (remote-first): the disk takes objects while the cluster is away, the cluster again after; all read back', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'zdedup-placement-'));
    const remote = new RemoteTier({ url: cluster.url, domain: 'placement', secret: SECRET, pageSize: 4096, timeoutMs: 1000, inflightBytes: 2 << 20 });
    const disk = new DiskTier({ path: join(dir, 'b.img'), size: 4096 + 16 * (1 << 20), segmentSize: 1 << 20, pageSize: 4096 });
    const tier = new PlacementTier(remote, disk, 'remote-first');
    const store = new PageStore({ arenaBytes: 64 << 10, maxPoolBytes: 64 << 10, background: false, tier });
    try {
      const a = store.createArea('a', 3000);
      const pages: Buffer[] = [];
      const put = async (i: number): Promise<void> => {
        const p = makePage('random', 20_000 + i);
        assert.equal(await store.storeAsync(a, i, p), 'stored', `page ${i} stored`);
        pages[i] = p;
      };
      for (let i = 0; i < 200; i++) await put(i);
      await store.settle();
      await remote.drain();
      const before = store.stats();
      assert.equal(before.disk_record_bytes_appended, 0, 'the cluster took everything while up');
      cluster.pauseAll();
      try {
        for (let i = 200; i < 1200; i++) await put(i); // beyond the 2 MiB in flight: the disk takes them
      } finally {
        cluster.resumeAll();
      }
      assert.ok(store.stats().disk_record_bytes_appended > 0, 'the disk took objects while the cluster was away');
      await remote.drain();
      const mid = store.stats().remote_stores;
      for (let i = 1200; i < 1400; i++) await put(i);
      await store.settle();
      await remote.drain();
      assert.ok(store.stats().remote_stores > mid, 'the cluster takes objects again');
      const into = Buffer.alloc(4096);
      for (let i = 0; i < 1400; i++) {
        assert.equal(await store.loadAsync(a, i, into), 'hit');
        assert.ok(into.equals(pages[i]!), `page ${i}`);
      }
      store.checkInvariants();
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('cluster unreachable: stores that need it get ENOSPC, remote loads EIO after a bounded wait; it resumes by itself', async () => {
    const { store, tier } = remoteStore('down', { timeoutMs: 1000 });
    try {
      const a = store.createArea('a', 2048);
      const pages = await fill(store, tier, a, 100, 6);
      const cold = pages.findIndex((_p, i) => store.needsTierRead(a, i));
      cluster.pauseAll(); // SIGSTOP: every node unreachable, data kept
      try {
        const into = Buffer.alloc(4096);
        const t0 = Date.now();
        await assert.rejects(store.loadAsync(a, cold, into), (e: unknown) => e instanceof ZdedupError && e.code === 'ERR_DISK_READ');
        assert.ok(Date.now() - t0 < 10_000, 'the load failed within its bound');
        // Keep storing new pages: the pool and then the tier's write buffers (2 MiB) fill, nothing
        // is acknowledged, stores are refused.
        let refused = 0;
        for (let i = 100; i < 2000 && refused === 0; i++) {
          const p = makePage('random', 7000 + i);
          const r = await Promise.race([store.storeAsync(a, i, p), sleep(15_000).then(() => 'hung' as const)]);
          assert.notEqual(r, 'hung', 'a store never waits forever');
          if (r !== 'stored') { assert.equal(r, 'reject_reclaim_fail'); refused++; } else pages[i] = p;
        }
        assert.ok(refused > 0, 'stores were refused (ENOSPC) while the cluster was away');
      } finally {
        cluster.resumeAll();
      }
      // Back: everything acknowledged before reads again, and new stores go through.
      await tier.drain();
      const t1 = Date.now();
      let ok = false;
      while (!ok && Date.now() - t1 < 20_000) {
        ok = (await store.storeAsync(a, 2047, makePage('random', 9999))) === 'stored';
        if (!ok) await sleep(200);
      }
      assert.ok(ok, 'stores accepted again without a restart');
      pages[2047] = makePage('random', 9999);
      await store.settle();
      await tier.drain();
      const into = Buffer.alloc(4096);
      for (let i = 0; i < pages.length; i++) {
        if (!pages[i]) continue;
        assert.equal(await store.loadAsync(a, i, into), 'hit');
        assert.ok(into.equals(pages[i]!), `page ${i} intact after the outage`);
      }
    } finally {
      await store.close();
    }
  });
});
