/**
 * The pressure policy of ephemeral pools: under the pool limit, ephemeral pages are dropped
 * (coldest first) before any persistent object is written back, sent to the tier or refused.
 * Persistent pages all survive; ephemeral ones are evicted and then miss (never return other data).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PageStore, type PageStoreOptions } from '../../src/core/page-store.js';
import { fillRandom } from '../helpers/pages.js';

/** A distinct page that compresses to about 1.6 KB (random head, zero tail). */
function page(seed: number): Buffer {
  const p = Buffer.alloc(4096);
  fillRandom(p.subarray(0, 1600), seed * 7919 + 1);
  return p;
}

const POOL = 1 << 20;
const EPH = 1200; // ~1.9 MB of ephemeral objects: more than the pool
const PERSISTENT = 300; // ~0.5 MB: fits the pool once the ephemeral pages are gone

async function run(opts: PageStoreOptions, tiered: boolean): Promise<void> {
  const store = new PageStore({ arenaBytes: 64 << 10, maxPoolBytes: POOL, background: false, ...opts });
  try {
    const a = store.createArea('a', 4096);
    const pool = store.createPool('cache', { ephemeral: true });
    const into = Buffer.alloc(4096);
    for (let i = 0; i < EPH; i++) store.put(pool, 1, i, page(100000 + i));
    let s = store.stats();
    assert.ok(s.pool_total_size <= POOL, 'puts stay within the pool limit');
    assert.ok(s.ephemeral_evicted_pages > 0, 'ephemeral pages made room for later ephemeral pages (coldest first)');
    const evictedByPuts = s.ephemeral_evicted_pages;
    // the newest puts are cached, the oldest were dropped first
    assert.equal(store.get(pool, 1, EPH - 1, into), 'hit');
    assert.ok(into.equals(page(100000 + EPH - 1)));
    assert.equal(store.get(pool, 1, 0, into), 'miss', 'the coldest page went first');

    for (let i = 0; i < PERSISTENT; i++) {
      const r = tiered ? await store.storeAsync(a, i, page(i)) : store.store(a, i, page(i));
      assert.equal(r, 'stored', `persistent store ${i} refused while ${store.stats().ephemeral_pages} ephemeral pages remain`);
      if (tiered && i % 16 === 15) await store.settle();
      s = store.stats();
      assert.equal(s.written_back_pages, 0, `store ${i}: a persistent object was written back while ephemeral pages remained`);
      assert.equal(s.pool_bypass_pages, 0, `store ${i}: a persistent object bypassed RAM while ephemeral pages remained`);
    }
    s = store.stats();
    assert.ok(s.ephemeral_evicted_pages > evictedByPuts, 'persistent stores evicted ephemeral pages');
    assert.ok(s.ephemeral_pages > 0, 'some ephemeral pages remain (only what was needed was dropped)');
    assert.ok(s.pool_total_size <= POOL);
    for (let i = 0; i < PERSISTENT; i++) {
      assert.equal(store.load(a, i, into), 'hit');
      assert.ok(into.equals(page(i)), `persistent page ${i}`);
    }
    // Every ephemeral get is the page put under its key, or a miss.
    let hits = 0;
    for (let i = 0; i < EPH; i++) {
      into.fill(0xee);
      if (store.get(pool, 1, i, into) === 'hit') { hits++; assert.ok(into.equals(page(100000 + i)), `ephemeral page ${i}`); }
    }
    assert.equal(hits, store.stats().ephemeral_pages, 'hits = ephemeral pages held');

    if (tiered) {
      // Beyond the pool, writeback starts only once no ephemeral page is left.
      for (let i = PERSISTENT; i < 3 * PERSISTENT; i++) {
        assert.equal(await store.storeAsync(a, i, page(i)), 'stored');
        s = store.stats();
        if (s.written_back_pages + s.pool_bypass_pages > 0) assert.equal(s.ephemeral_pages, 0, 'writeback or bypass while ephemeral pages remain');
        if (i % 16 === 15) await store.settle();
      }
      await store.settle();
      s = store.stats();
      assert.ok(s.written_back_pages + s.pool_bypass_pages > 0, 'the tier took the rest');
      for (let i = 0; i < 3 * PERSISTENT; i++) {
        assert.equal(await store.loadAsync(a, i, into), 'hit');
        assert.ok(into.equals(page(i)), `persistent page ${i} after writeback`);
      }
    }
    store.checkInvariants();
  } finally {
    await store.close();
  }
}

test('without a tier: persistent stores never refused while ephemeral pages remain; ephemeral ones are evicted coldest first', async () => {
  await run({}, false);
});

test('with a disk tier: no persistent object written back or bypassing RAM while ephemeral pages remain', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'zdedup-eph-'));
  try {
    await run({ backing: { path: join(dir, 'b.img'), size: 16 << 20, segmentSize: 256 << 10 } }, true);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('an object shared by a persistent slot and an ephemeral entry is not freed by dropping the entry', () => {
  const store = new PageStore({ sharedDedup: true, arenaBytes: 64 << 10, maxPoolBytes: 256 << 10 });
  const a = store.createArea('a', 4096);
  const pool = store.createPool('cache', { ephemeral: true });
  const shared = page(1);
  assert.equal(store.store(a, 0, shared), 'stored');
  assert.equal(store.put(pool, 9, 0, shared), 'stored');
  assert.equal(store.dropEphemeral(1 << 30), 0, 'dropping the shared entry frees no RAM');
  assert.equal(store.stats().ephemeral_pages, 0);
  const into = Buffer.alloc(4096);
  assert.equal(store.load(a, 0, into), 'hit');
  assert.ok(into.equals(shared));
  assert.equal(store.get(pool, 9, 0, into), 'miss');
  store.checkInvariants();
});
