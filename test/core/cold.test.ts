/**
 * The cold tier's behaviours that the property test does not single out: corruption inside a
 * group (EIO for the damaged pages only, never wrong data), the idle time, the promotion policy
 * (a second load while cold), pages lz4 cannot shrink never grouped, option validation.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PageStore, type PageStoreOptions } from '../../src/core/page-store.js';
import { ZdedupError } from '../../src/core/errors.js';
import { makePage } from '../helpers/pages.js';

function coldStore(cold: PageStoreOptions['cold'] = {}): PageStore {
  return new PageStore({ background: false, cold: { afterSeconds: 0, groupPages: 4, ...cold } });
}

test('a corrupt byte inside a cold group fails only pages of that group (ERR_DECOMPRESS), never returns wrong data', async () => {
  const s = coldStore();
  const a = s.createArea('a', 16);
  const pages = Array.from({ length: 16 }, (_, i) => makePage('text', 1000 + i));
  pages.forEach((p, i) => s.store(a, i, p));
  await s.settle();
  assert.equal(s.stats().cold_objects, 16);
  s.corruptForTest(a, 5); // pages 4..7 share a group (ids in store order, groups of 4)
  const into = Buffer.alloc(4096);
  const failed: number[] = [];
  for (let i = 0; i < 16; i++) {
    try {
      s.load(a, i, into);
      assert.ok(into.equals(pages[i]!), `page ${i}: wrong data`);
    } catch (e) {
      assert.ok(e instanceof ZdedupError && e.code === 'ERR_DECOMPRESS', `page ${i}: ${String(e)}`);
      failed.push(i);
    }
  }
  assert.ok(failed.length > 0, 'the damaged group fails');
  assert.ok(failed.every((i) => i >= 4 && i < 8), `only pages of the damaged group fail: ${failed.join(',')}`);
  // the async path rejects the same way, and a batch over healthy groups still succeeds
  const batch = Buffer.alloc(4 * 4096);
  await assert.rejects(async () => s.startLoadBatch(a, 4, 4, batch), /ERR_DECOMPRESS|corrupt|fingerprint/);
  assert.equal(await s.startLoadBatch(a, 8, 4, batch), 4);
  assert.ok(batch.equals(Buffer.concat(pages.slice(8, 12))));
  assert.ok(s.stats().decompress_fail > 0);
  // a duplicate of a damaged page is never shared with it: it gets a healthy object of its own
  s.store(a, failed[0]!, pages[failed[0]!]!);
  s.load(a, failed[0]!, into);
  assert.ok(into.equals(pages[failed[0]!]!));
  s.checkInvariants();
});

test('objects go cold only after cold-after seconds without a store, load or dedup hit', async () => {
  let now = 1_000_000;
  const s = coldStore({ afterSeconds: 60, clock: () => now });
  const a = s.createArea('a', 8);
  for (let i = 0; i < 8; i++) s.store(a, i, makePage('text', i));
  await s.settle();
  assert.equal(s.stats().cold_objects, 0, 'young objects stay hot');
  assert.equal(s.stats().cold_pending_pages, 8);
  now += 30_000;
  s.load(a, 0, Buffer.alloc(4096)); // page 0 used again at t+30s
  now += 31_000; // t+61s: pages 1..7 idle for 61 s, page 0 for 31 s
  await s.settle();
  assert.equal(s.locationForTest(a, 0), 'ram');
  // one full group of 4; the 3 idle pages left over wait: a partial group is written only once
  // its members have been idle twice cold-after, so a trickle of stores still forms full groups
  for (let i = 1; i < 5; i++) assert.equal(s.locationForTest(a, i), 'cold', `page ${i}`);
  for (let i = 5; i < 8; i++) assert.equal(s.locationForTest(a, i), 'ram', `page ${i}`);
  assert.equal(s.stats().cold_pending_pages, 4);
  now += 120_000;
  await s.settle();
  assert.equal(s.stats().cold_pending_pages, 0, 'settled');
  assert.equal(s.stats().cold_objects, 8);
  s.checkInvariants();
});

test('promotion: the first load of a cold page decompresses its group, the second brings it back hot', async () => {
  const s = coldStore();
  const a = s.createArea('a', 8);
  const pages = Array.from({ length: 8 }, (_, i) => makePage('text', 50 + i));
  pages.forEach((p, i) => s.store(a, i, p));
  await s.settle();
  const into = Buffer.alloc(4096);
  s.load(a, 1, into);
  assert.ok(into.equals(pages[1]!));
  assert.equal(s.locationForTest(a, 1), 'cold', 'one load does not rehydrate');
  const st1 = s.stats();
  assert.equal(st1.cold_loads, 1);
  s.load(a, 2, into); // same group, cached: no second decompression
  assert.equal(s.stats().cold_group_decompressions, st1.cold_group_decompressions);
  s.load(a, 1, into);
  assert.ok(into.equals(pages[1]!));
  assert.equal(s.locationForTest(a, 1), 'ram', 'a second load promotes');
  assert.equal(s.stats().cold_promoted_pages, 1);
  s.checkInvariants();
});

test('pages lz4 cannot shrink are never grouped, and the store settles with nothing pending', async () => {
  const s = coldStore();
  const a = s.createArea('a', 8);
  for (let i = 0; i < 8; i++) s.store(a, i, makePage('random', i));
  await s.settle();
  const st = s.stats();
  assert.equal(st.cold_objects, 0);
  assert.equal(st.cold_groups_written, 0);
  assert.equal(st.cold_pending_pages, 0);
  assert.equal(st.stored_incompressible_pages, 8);
});

test('cold tier options are validated; without one every cold stat is 0', () => {
  assert.throws(() => coldStore({ codec: 'lz4' }), (e: unknown) => e instanceof ZdedupError && e.code === 'ERR_BAD_CODEC');
  assert.throws(() => coldStore({ codec: 'zstd:99' }), (e: unknown) => e instanceof ZdedupError && e.code === 'ERR_BAD_CODEC');
  assert.throws(() => coldStore({ groupPages: 0 }), (e: unknown) => e instanceof ZdedupError && e.code === 'ERR_INVALID_ARGUMENT');
  assert.throws(() => coldStore({ groupPages: 65 }), (e: unknown) => e instanceof ZdedupError && e.code === 'ERR_INVALID_ARGUMENT');
  assert.throws(() => coldStore({ afterSeconds: -1 }), (e: unknown) => e instanceof ZdedupError && e.code === 'ERR_INVALID_ARGUMENT');
  const st = new PageStore().stats();
  for (const k of ['cold_objects', 'cold_bytes', 'cold_pending_pages', 'cold_loads'] as const) assert.equal(st[k], 0, k);
});
