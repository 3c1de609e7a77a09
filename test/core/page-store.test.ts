import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PageStore } from '../../src/core/page-store.js';
import { ZdedupError } from '../../src/core/errors.js';
import { makePage, fillRandom } from '../helpers/pages.js';

function code(fn: () => unknown): string {
  try { fn(); } catch (e) { assert.ok(e instanceof ZdedupError, `expected ZdedupError, got ${e}`); return e.code; }
  assert.fail('expected an error');
}

test('forced fingerprint collisions never return wrong data', () => {
  for (const codec of ['lz4', 'zstd', 'none']) {
    const store = new PageStore({ codec, fingerprint: () => 42n }); // every page collides
    const a = store.createArea('a', 64);
    const pages: Buffer[] = [];
    for (let i = 0; i < 64; i++) {
      const p = i % 3 === 0 ? makePage('text', i) : makePage(i % 3 === 1 ? 'random' : 'dup', i);
      pages.push(p);
      assert.equal(store.store(a, i, p), 'stored');
    }
    const into = Buffer.alloc(4096);
    for (let i = 0; i < 64; i++) {
      assert.equal(store.load(a, i, into), 'hit');
      assert.ok(into.equals(pages[i]!), `${codec}: page ${i}`);
    }
    const s = store.stats();
    assert.ok(s.verify_mismatch > 0, 'collisions were detected by byte comparison');
    assert.equal(s.unique_objects, new Set(pages.map((p) => p.toString('hex'))).size);
    store.checkInvariants();
  }
});

test('same-filled pages cost no allocation; zero pages are counted apart', () => {
  const store = new PageStore();
  const a = store.createArea('a', 100);
  for (let i = 0; i < 50; i++) store.store(a, i, Buffer.alloc(4096));
  for (let i = 50; i < 100; i++) store.store(a, i, makePage('same', i));
  const s = store.stats();
  assert.equal(s.stored_pages, 100);
  assert.equal(s.same_filled_pages, 100);
  assert.equal(s.zero_pages, 50);
  assert.equal(s.unique_objects, 0);
  assert.equal(s.pool_total_size, 0);
  const into = Buffer.alloc(4096);
  for (let i = 50; i < 100; i++) { store.load(a, i, into); assert.ok(into.equals(makePage('same', i))); }
  assert.equal(store.pageKind(a, 0), 1);
  assert.equal(store.pageKind(a, 60), 2);
});

test('incompressible pages are stored raw, not rejected', () => {
  const store = new PageStore();
  const a = store.createArea('a', 10);
  const p = Buffer.alloc(4096); fillRandom(p, 7);
  assert.equal(store.store(a, 0, p), 'stored');
  assert.equal(store.stats().stored_incompressible_pages, 1);
  assert.equal(store.stats().compressed_bytes, 4096);
});

test('overwrite and invalidate drop references; the last one frees the object', () => {
  const store = new PageStore();
  const a = store.createArea('a', 10);
  const p = makePage('text', 1), q = makePage('text', 2);
  store.store(a, 0, p); store.store(a, 1, p); store.store(a, 2, p);
  assert.equal(store.stats().duplicate_pages, 2);
  store.store(a, 0, q);
  assert.equal(store.stats().unique_objects, 2);
  store.invalidatePage(a, 1); store.invalidatePage(a, 2);
  assert.equal(store.stats().unique_objects, 1);
  store.store(a, 0, q); // rewrite same content in place
  assert.equal(store.stats().unique_objects, 1);
  store.invalidateArea(a);
  const s = store.stats();
  assert.equal(s.unique_objects, 0);
  assert.equal(s.stored_pages, 0);
  assert.equal(s.pool_total_size, 0, 'empty arenas are returned');
});

test('a corrupted object is an error, never wrong data', () => {
  const store = new PageStore();
  const a = store.createArea('a', 4);
  store.store(a, 0, makePage('text', 3));
  store.corruptForTest(a, 0);
  assert.equal(code(() => store.load(a, 0, Buffer.alloc(4096))), 'ERR_DECOMPRESS');
  assert.ok(store.stats().decompress_fail >= 1);
});

test('pool limit rejects the store and keeps the old content', () => {
  const store = new PageStore({ maxPoolBytes: 1 << 20 });
  const a = store.createArea('a', 1000);
  let i = 0, r = 'stored';
  const p = Buffer.alloc(4096);
  for (; i < 1000; i++) { fillRandom(p, i + 1); r = store.store(a, i, p); if (r !== 'stored') break; }
  assert.equal(r, 'reject_pool_limit');
  assert.ok(store.stats().pool_limit_hit >= 1);
  assert.ok(store.stats().pool_total_size <= 1 << 20);
  assert.equal(store.load(a, i, Buffer.alloc(4096)), 'miss', 'rejected slot unchanged');
  const into = Buffer.alloc(4096);
  fillRandom(p, 1); store.load(a, 0, into); assert.ok(into.equals(p));
});

test('page sizes 4 KiB to 64 KiB round-trip', () => {
  for (const pageSize of [4096, 8192, 16384, 32768, 65536]) {
    const store = new PageStore({ pageSize });
    const a = store.createArea('a', 8);
    const pages = ['zero', 'same', 'dup', 'text', 'random', 'dup'].map((k, i) => makePage(k as 'zero', i, pageSize));
    pages.forEach((p, i) => assert.equal(store.store(a, i, p), 'stored'));
    const into = Buffer.alloc(pageSize);
    pages.forEach((p, i) => { store.load(a, i, into); assert.ok(into.equals(p), `${pageSize}: ${i}`); });
    store.checkInvariants();
  }
});

test('batch store and load', () => {
  const store = new PageStore();
  const a = store.createArea('a', 16);
  const buf = Buffer.concat([0, 1, 2, 3, 4, 5].map((i) => makePage(i % 2 ? 'text' : 'random', i)));
  assert.equal(store.storeBatch(a, 3, buf), 6);
  const out = Buffer.alloc(8 * 4096, 0xff);
  assert.equal(store.loadBatch(a, 2, 8, out), 6);
  assert.ok(out.subarray(0, 4096).equals(Buffer.alloc(4096)), 'miss zero-filled');
  assert.ok(out.subarray(4096, 7 * 4096).equals(buf));
});

test('bad input: typed errors with stable codes and no state change', () => {
  const store = new PageStore();
  const a = store.createArea('a', 4);
  store.store(a, 0, makePage('text', 1));
  const before = JSON.stringify(store.stats());
  assert.equal(code(() => store.store(a, 0, Buffer.alloc(100))), 'ERR_PAGE_LENGTH');
  assert.equal(code(() => store.store(a, 4, Buffer.alloc(4096))), 'ERR_OFFSET_RANGE');
  assert.equal(code(() => store.store(a, -1, Buffer.alloc(4096))), 'ERR_INVALID_ARGUMENT');
  assert.equal(code(() => store.store(a, 1.5, Buffer.alloc(4096))), 'ERR_INVALID_ARGUMENT');
  assert.equal(code(() => store.store(7 as never, 0, Buffer.alloc(4096))), 'ERR_UNKNOWN_AREA');
  assert.equal(code(() => store.load(a, 9, Buffer.alloc(4096))), 'ERR_OFFSET_RANGE');
  assert.equal(code(() => store.load(a, 0, Buffer.alloc(10))), 'ERR_PAGE_LENGTH');
  assert.equal(code(() => store.invalidatePage(a, NaN)), 'ERR_INVALID_ARGUMENT');
  assert.equal(code(() => store.storeBatch(a, 3, Buffer.alloc(8192))), 'ERR_OFFSET_RANGE');
  assert.equal(code(() => store.area('nope')), 'ERR_UNKNOWN_AREA');
  assert.equal(code(() => store.createArea('a', 4)), 'ERR_AREA_EXISTS');
  assert.equal(code(() => store.createArea('b', -4)), 'ERR_INVALID_ARGUMENT');
  assert.equal(code(() => new PageStore({ codec: 'gzip' })), 'ERR_BAD_CODEC');
  assert.equal(code(() => new PageStore({ codec: 'zstd:99' })), 'ERR_BAD_CODEC');
  assert.equal(code(() => new PageStore({ codec: 'lz4:3' })), 'ERR_BAD_CODEC');
  assert.equal(code(() => new PageStore({ pageSize: 5000 })), 'ERR_INVALID_ARGUMENT');
  assert.equal(code(() => new PageStore({ pageSize: 2048 })), 'ERR_INVALID_ARGUMENT');
  assert.equal(JSON.stringify(store.stats()).replace(/"store_calls":\d+|"load_calls":\d+/g, ''), before.replace(/"store_calls":\d+|"load_calls":\d+/g, ''));
  const into = Buffer.alloc(4096);
  store.load(a, 0, into);
  assert.ok(into.equals(makePage('text', 1)), 'nothing lost');
});

test('objects shared by more than 255 slots keep exact reference counts', () => {
  const store = new PageStore();
  const a = store.createArea('a', 1000);
  const p = makePage('text', 9);
  for (let i = 0; i < 1000; i++) store.store(a, i, p);
  assert.equal(store.stats().unique_objects, 1);
  assert.equal(store.stats().duplicate_pages, 999);
  store.checkInvariants();
  for (let i = 0; i < 999; i++) store.invalidatePage(a, i);
  store.checkInvariants();
  assert.equal(store.stats().unique_objects, 1, 'still referenced once');
  const into = Buffer.alloc(4096);
  assert.equal(store.load(a, 999, into), 'hit');
  assert.ok(into.equals(p));
  store.invalidatePage(a, 999);
  assert.equal(store.stats().unique_objects, 0);
  assert.equal(store.stats().pool_total_size, 0);
});

test('maybeCompact compacts only when frees left enough waste', () => {
  const store = new PageStore({ codec: 'none' });
  const a = store.createArea('a', 8192);
  const p = Buffer.alloc(4096);
  for (let i = 0; i < 8192; i++) { fillRandom(p, i + 1); store.store(a, i, p); }
  assert.equal(store.maybeCompact(1 << 20), null, 'a dense pool is left alone');
  for (let i = 0; i < 8192; i += 2) store.invalidatePage(a, i); // every zspage half empty
  const before = store.stats().pool_total_size;
  const r = store.maybeCompact(1 << 20);
  assert.ok(r && r.moved_objects > 0, 'a first step moved objects');
  for (let x = store.maybeCompact(1 << 20); x && x.moved_objects + x.moved_zspages + x.freed_arenas > 0; x = store.maybeCompact(1 << 20)) { /* further bounded steps */ }
  assert.ok(store.stats().pool_total_size < before * 0.6);
  store.checkInvariants();
  const into = Buffer.alloc(4096);
  for (let i = 1; i < 8192; i += 2) { fillRandom(p, i + 1); store.load(a, i, into); assert.ok(into.equals(p)); }
});

test('deleteArea drops its pages and its name; other areas are untouched', () => {
  const store = new PageStore();
  const a = store.createArea('a', 8), b = store.createArea('b', 8);
  store.store(a, 0, makePage('text', 1)); store.store(b, 0, makePage('text', 2));
  store.deleteArea(a);
  assert.equal(code(() => store.area('a')), 'ERR_UNKNOWN_AREA');
  assert.equal(code(() => store.load(a, 0, Buffer.alloc(4096))), 'ERR_UNKNOWN_AREA');
  assert.equal(store.stats().unique_objects, 1);
  const into = Buffer.alloc(4096);
  assert.equal(store.load(b, 0, into), 'hit');
  assert.ok(into.equals(makePage('text', 2)));
  store.checkInvariants();
});

test('metadata_bytes counts the slot map blocks written, not the whole reservation of a huge empty area', () => {
  const store = new PageStore();
  const a = store.createArea('big', 2 ** 30); // 4 TiB of 4 KiB pages: 4 GiB of slot map reserved
  const empty = store.stats();
  assert.equal(empty.slot_map_reserved_bytes, 4 * 2 ** 30);
  assert.ok(empty.metadata_bytes < 64 << 20, `an empty area costs little (${empty.metadata_bytes} B)`);
  store.store(a, 0, makePage('text', 1));
  store.store(a, 5000, makePage('text', 2));
  store.store(a, 5001, makePage('text', 3)); // same 1024-slot block as 5000
  const s = store.stats();
  assert.ok(s.metadata_bytes >= empty.metadata_bytes + 2 * 4096, 'the two written slot-map blocks count');
  assert.ok(s.metadata_bytes < 64 << 20, 'and not the 4 GiB reservation');
  assert.ok(s.effective_ratio > 0);
});
