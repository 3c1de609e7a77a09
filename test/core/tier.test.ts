/**
 * The page store with a disk tier: behaviours that the property test does not single out —
 * collisions against objects that live only on disk, corruption of one record, a full tier, the
 * writer bringing the pool under its accept threshold, and the LRU order of writeback.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PageStore, type PageStoreOptions } from '../../src/core/page-store.js';
import { ZdedupError } from '../../src/core/errors.js';
import { makePage } from '../helpers/pages.js';

function withDir(fn: (dir: string) => Promise<void>): () => Promise<void> {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), 'zdedup-tier-'));
    try { await fn(dir); } finally { rmSync(dir, { recursive: true, force: true }); }
  };
}

function tiny(dir: string, extra: PageStoreOptions = {}): PageStore {
  return new PageStore({
    arenaBytes: 64 << 10, maxPoolBytes: 64 << 10, background: false,
    backing: { path: join(dir, 'b.img'), size: 4096 + 64 * (32 << 10), segmentSize: 32 << 10 },
    ...extra,
  });
}

test('forced fingerprint collisions against disk-only objects never share wrong content (sync and async stores)', withDir(async (dir) => {
  const store = tiny(dir, { fingerprint: () => 42n }); // every page has the same fingerprint
  try {
    const a = store.createArea('a', 200);
    const pages: Buffer[] = [];
    for (let i = 0; i < 100; i++) {
      const p = makePage('random', i);
      pages.push(p);
      assert.equal(await store.storeAsync(a, i, p), 'stored');
      if (i % 10 === 9) await store.settle(); // write the older ones back
    }
    await store.settle();
    assert.ok(store.stats().written_back_pages > 0, 'objects went to disk');
    // New distinct pages must be compared against every colliding candidate, on disk too.
    for (let i = 100; i < 140; i++) {
      const p = makePage('random', i);
      pages.push(p);
      const r = i % 2 === 0 ? await store.storeAsync(a, i, p) : store.store(a, i, p);
      assert.equal(r, 'stored');
    }
    // And a true duplicate of a disk-only page is found and shared.
    const before = store.stats().dedup_hits;
    assert.equal(await store.storeAsync(a, 150, pages[3]!), 'stored');
    assert.equal(store.stats().dedup_hits, before + 1);
    pages[150] = pages[3]!;
    const into = Buffer.alloc(4096);
    for (let i = 0; i < 151; i++) {
      if (pages[i] === undefined) continue;
      assert.equal(await store.loadAsync(a, i, into), 'hit');
      assert.ok(into.equals(pages[i]!), `page ${i}`);
    }
    const s = store.stats();
    assert.ok(s.verify_mismatch > 0, 'collisions were caught by comparing bytes');
    assert.equal(s.unique_objects, 140);
    store.checkInvariants();
  } finally {
    await store.close();
  }
}));

test('a corrupted disk record fails only its own page, with ERR_DISK_READ, never wrong data', withDir(async (dir) => {
  const store = tiny(dir);
  try {
    const a = store.createArea('a', 64);
    const pages = Array.from({ length: 64 }, (_, i) => makePage(i % 2 ? 'random' : 'text', i));
    for (let i = 0; i < 64; i++) assert.equal(await store.storeAsync(a, i, pages[i]!), 'stored');
    await store.settle();
    let victim = -1;
    for (let i = 0; i < 64 && victim < 0; i++) if (store.locationForTest(a, i) === 'tier') victim = i;
    assert.ok(victim >= 0, 'some page is on disk only');
    store.corruptForTest(a, victim);
    const into = Buffer.alloc(4096);
    await assert.rejects(store.loadAsync(a, victim, into), (e: unknown) => e instanceof ZdedupError && (e.code === 'ERR_DISK_READ' || e.code === 'ERR_DECOMPRESS'));
    assert.throws(() => store.load(a, victim, into), (e: unknown) => e instanceof ZdedupError && (e.code === 'ERR_DISK_READ' || e.code === 'ERR_DECOMPRESS'));
    for (let i = 0; i < 64; i++) {
      if (i === victim) continue;
      assert.equal(await store.loadAsync(a, i, into), 'hit');
      assert.ok(into.equals(pages[i]!), `neighbour ${i} intact`);
    }
  } finally {
    await store.close();
  }
}));

test('a full disk tier refuses new objects with reject_reclaim_fail and keeps serving what it holds', withDir(async (dir) => {
  const store = new PageStore({
    arenaBytes: 64 << 10, maxPoolBytes: 64 << 10, background: false,
    backing: { path: join(dir, 'b.img'), size: 4096 + 6 * (32 << 10), segmentSize: 32 << 10 },
  });
  try {
    const a = store.createArea('a', 400);
    const kept = new Map<number, Buffer>();
    let refused = 0;
    for (let i = 0; i < 400; i++) {
      const p = makePage('random', i);
      const r = await store.storeAsync(a, i, p);
      if (r === 'stored') kept.set(i, p);
      else { assert.equal(r, 'reject_reclaim_fail'); refused++; }
      if (i % 8 === 0) await store.settle();
    }
    assert.ok(refused > 0, 'the tier filled up');
    assert.ok(store.stats().reject_reclaim_fail >= refused);
    const into = Buffer.alloc(4096);
    for (const [i, p] of kept) {
      assert.equal(await store.loadAsync(a, i, into), 'hit');
      assert.ok(into.equals(p), `page ${i}`);
    }
    for (let i = 0; i < 400; i++) if (!kept.has(i)) assert.equal(store.load(a, i, into), 'miss', `refused page ${i} left its slot empty`);
    // Freeing space lets stores in again.
    store.invalidateRange(a, 0, 400);
    await store.settle();
    assert.equal(await store.storeAsync(a, 0, makePage('random', 9999)), 'stored');
    store.checkInvariants();
  } finally {
    await store.close();
  }
}));

test('the writer brings the pool to its accept threshold and writes back least recently used objects first', withDir(async (dir) => {
  const store = new PageStore({
    maxPoolBytes: 4 << 20, background: false,
    backing: { path: join(dir, 'b.img'), size: 64 << 20, segmentSize: 256 << 10 },
  });
  try {
    const a = store.createArea('a', 4096);
    const pages = Array.from({ length: 4096 }, (_, i) => makePage('random', i)); // raw pages: 16 MiB, 4x the pool
    for (let i = 0; i < 4096; i++) {
      assert.equal(await store.storeAsync(a, i, pages[i]!), 'stored');
      if (i % 2048 === 0) await store.settle();
    }
    await store.settle();
    const s = store.stats();
    assert.ok(s.pool_limit_hit > 0);
    assert.ok(s.pool_total_size <= Math.floor((4 << 20) * 0.9), `pool ${s.pool_total_size} at or under the accept threshold`);
    assert.ok(s.written_back_pages > 0);
    assert.equal(store.locationForTest(a, 6), 'tier', 'an old unreferenced page went to disk');
    assert.equal(store.locationForTest(a, 4090), 'tier', 'stores while the pool was over its limit bypassed RAM');
    // Below the threshold again, a new object is placed in RAM.
    assert.equal(await store.storeAsync(a, 4095, makePage('random', 99999)), 'stored');
    assert.equal(store.locationForTest(a, 4095), 'ram');
    assert.ok(s.disk_live_bytes > 0 && s.disk_segments > 0);
    store.checkInvariants();
  } finally {
    await store.close();
  }
}));

test('a backing that holds other data is refused unless overwrite is asked for; zeroes and our own header are taken', withDir(async (dir) => {
  const { writeFileSync } = await import('node:fs');
  const path = join(dir, 'other.img');
  writeFileSync(path, Buffer.concat([Buffer.from('precious data that is not ours'), Buffer.alloc(1 << 20)]));
  const opts = (overwrite: boolean): PageStoreOptions => ({ maxPoolBytes: 1 << 20, background: false, backing: { path, size: 1 << 20, segmentSize: 64 << 10, overwrite } });
  assert.throws(() => new PageStore(opts(false)), /holds other data/);
  const s1 = new PageStore(opts(true)); // overwritten on request: now it has our header
  await s1.close();
  const s2 = new PageStore(opts(false)); // an earlier zdedup backing is taken
  await s2.close();
  const zeroes = join(dir, 'zero.img');
  writeFileSync(zeroes, Buffer.alloc(1 << 20));
  const s3 = new PageStore({ maxPoolBytes: 1 << 20, background: false, backing: { path: zeroes, segmentSize: 64 << 10 } });
  await s3.close();
}));

test('a pool quota: the area that fills it writes back its own coldest objects; another area keeps all of its RAM', withDir(async (dir) => {
  const store = new PageStore({
    maxPoolBytes: 8 << 20, background: false,
    backing: { path: join(dir, 'b.img'), size: 64 << 20, segmentSize: 256 << 10 },
  });
  try {
    const a = store.createArea('tenant-a', 2048, { maxPoolBytes: 512 << 10 });
    const b = store.createArea('tenant-b', 512);
    const pb = Array.from({ length: 256 }, (_, i) => makePage('random', 100000 + i)); // 1 MiB raw
    for (let i = 0; i < 256; i++) assert.equal(await store.storeAsync(b, i, pb[i]!), 'stored');
    const pa = Array.from({ length: 2048 }, (_, i) => makePage('random', i)); // 8 MiB raw, 16x its quota
    for (let i = 0; i < 2048; i++) assert.equal(await store.storeAsync(a, i, pa[i]!), 'stored');
    const sa = store.areaStats(a), sb = store.areaStats(b);
    assert.ok(sa.pool_bytes! <= 512 << 10, `tenant-a holds ${sa.pool_bytes} B of RAM, quota 512 KiB`);
    assert.equal(sa.max_pool_bytes, 512 << 10);
    assert.equal(sb.pool_bytes, 256 * 4096, 'tenant-b kept every object in RAM');
    for (let i = 0; i < 256; i++) assert.equal(store.locationForTest(b, i), 'ram', `tenant-b page ${i} was not pushed out`);
    assert.ok(store.stats().quota_limit_hit > 0);
    assert.ok(store.stats().written_back_pages > 0);
    assert.equal(store.locationForTest(a, 2047), 'ram', "tenant-a's newest page is in RAM: its own coldest went out");
    const into = Buffer.alloc(4096);
    for (let i = 0; i < 2048; i += 7) { assert.equal(await store.loadAsync(a, i, into), 'hit'); assert.ok(into.equals(pa[i]!)); }
    for (let i = 0; i < 256; i++) { assert.equal(store.load(b, i, into), 'hit'); assert.ok(into.equals(pb[i]!)); }
    store.checkInvariants();
    assert.ok(store.areaStats(a).pool_bytes! <= 512 << 10, 'loads do not promote past the quota');
  } finally {
    await store.close();
  }
}));

test('a pool quota without a tier refuses the area that fills it (reject_quota) and only that area', () => {
  const store = new PageStore({ maxPoolBytes: 8 << 20 });
  const a = store.createArea('a', 512, { maxPoolBytes: 256 << 10 });
  const b = store.createArea('b', 512);
  let refused = 0;
  for (let i = 0; i < 512; i++) {
    const r = store.store(a, i, makePage('random', i));
    if (r !== 'stored') { assert.equal(r, 'reject_quota'); refused++; }
  }
  assert.ok(refused > 0 && refused < 512, `some stores refused (${refused})`);
  assert.equal(store.lastReject, 'reject_quota');
  for (let i = 0; i < 512; i++) assert.equal(store.store(b, i, makePage('random', 5000 + i)), 'stored', 'b is not limited by a');
  assert.equal(store.lastReject, 'stored', 'lastReject is reset by a store that succeeds');
  assert.ok(store.areaStats(a).pool_bytes! <= 256 << 10);
  store.checkInvariants();
  store.createArea('late', 8, { maxPoolBytes: 1 << 20 }); // owners were recorded from the start: a later quota area is fine
  const fresh = new PageStore();
  fresh.store(fresh.createArea('x', 4), 0, makePage('random', 1));
  assert.throws(() => fresh.createArea('q', 4, { maxPoolBytes: 1 << 20 }), /before the store holds objects/);
});
