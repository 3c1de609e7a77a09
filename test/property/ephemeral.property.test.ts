/**
 * Property test of ephemeral pools against a plain model (Map key -> bytes), mixed with
 * persistent stores in the same store (and, with sharedDedup, the same dedup domain):
 * - a get returns the last page put under its key, or misses — never other data (also under
 *   pressure, with forced fingerprint collisions, keys that differ only in their high bits);
 * - without pressure a put is then a hit;
 * - persistent pages always load back exactly (ephemeral refs never free a shared object);
 * - the white-box invariants hold (refcounts = slot + entry references).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PageStore, type AreaId, type PoolId, type PageStoreOptions } from '../../src/core/page-store.js';
import { KINDS, makePage, type Kind } from '../helpers/pages.js';

const PAGES = 16;
// Keys that differ only in the high 32 bits, a bigint near 2^64, and small numbers.
const KEYS: (number | bigint)[] = [0, 1, 2 ** 32, 2 ** 32 + 1, 2 ** 52 + 7, (1n << 64n) - 1n, 0xfffffffen];
const INDEXES = [0, 1, 2, 5, 0xffffffff];

type Op =
  | { t: 'put'; pool: number; key: number; idx: number; kind: Kind; v: number }
  | { t: 'get'; pool: number; key: number; idx: number }
  | { t: 'flush'; pool: number; key: number; idx: number }
  | { t: 'flushObject'; pool: number; key: number }
  | { t: 'flushPool'; pool: number }
  | { t: 'store'; off: number; kind: Kind; v: number }
  | { t: 'inv'; off: number }
  | { t: 'compact' };

const key = fc.nat(KEYS.length - 1);
const idx = fc.nat(INDEXES.length - 1);
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 8, arbitrary: fc.record({ t: fc.constant('put' as const), pool: fc.nat(1), key, idx, kind: fc.constantFrom(...KINDS), v: fc.nat(30) }) },
  { weight: 6, arbitrary: fc.record({ t: fc.constant('get' as const), pool: fc.nat(1), key, idx }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('flush' as const), pool: fc.nat(1), key, idx }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('flushObject' as const), pool: fc.nat(1), key }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('flushPool' as const), pool: fc.nat(1) }) },
  { weight: 5, arbitrary: fc.record({ t: fc.constant('store' as const), off: fc.nat(PAGES - 1), kind: fc.constantFrom(...KINDS), v: fc.nat(30) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('inv' as const), off: fc.nat(PAGES - 1) }) },
  { weight: 1, arbitrary: fc.constant({ t: 'compact' as const }) },
);

/** Pressure seen across runs (the pressure test must actually evict and reject). */
const seen = { evicted: 0, rejected: 0 };
const mk = (p: number, k: number, i: number): string => `${p}/${k}/${i}`;

/**
 * Runs `ops`; `exact`: no pressure, so every put must be stored and every get of a put key must hit.
 */
function run(opts: PageStoreOptions, ops: Op[], exact: boolean): void {
  const store = new PageStore(opts);
  const area: AreaId = store.createArea('a', PAGES);
  const pools: PoolId[] = [store.createPool('p0', { ephemeral: true }), store.createPool('p1', { ephemeral: true })];
  const eph = new Map<string, Buffer>();
  const slots = new Map<number, Buffer>();
  const into = Buffer.alloc(store.pageSize);
  const getCheck = (p: number, k: number, i: number): void => {
    into.fill(0xee);
    const r = store.get(pools[p]!, KEYS[k]!, INDEXES[i]!, into);
    const want = eph.get(mk(p, k, i));
    if (r === 'hit') {
      assert.ok(want !== undefined, `get ${mk(p, k, i)} hit a key never put (or flushed)`);
      assert.ok(into.equals(want), `get ${mk(p, k, i)} returned other data`);
    } else {
      assert.ok(into.every((b) => b === 0xee), 'a miss leaves the buffer untouched');
      if (exact) assert.equal(want, undefined, `get ${mk(p, k, i)} missed without pressure`);
      eph.delete(mk(p, k, i)); // it vanished; later gets must miss too
    }
  };
  try {
    for (const op of ops) {
      switch (op.t) {
        case 'put': {
          const page = makePage(op.kind, op.v);
          const r = store.put(pools[op.pool]!, KEYS[op.key]!, INDEXES[op.idx]!, page);
          if (exact) assert.equal(r, 'stored');
          if (r === 'stored') eph.set(mk(op.pool, op.key, op.idx), page); else eph.delete(mk(op.pool, op.key, op.idx));
          if (exact) getCheck(op.pool, op.key, op.idx); // a put is then a hit
          break;
        }
        case 'get': getCheck(op.pool, op.key, op.idx); break;
        case 'flush':
          store.flush(pools[op.pool]!, KEYS[op.key]!, INDEXES[op.idx]!);
          eph.delete(mk(op.pool, op.key, op.idx));
          break;
        case 'flushObject':
          store.flushObject(pools[op.pool]!, KEYS[op.key]!);
          for (const i of INDEXES.keys()) eph.delete(mk(op.pool, op.key, i));
          break;
        case 'flushPool':
          store.flushPool(pools[op.pool]!);
          for (const k of eph.keys()) if (k.startsWith(`${op.pool}/`)) eph.delete(k);
          break;
        case 'store': {
          const page = makePage(op.kind, op.v);
          if (store.store(area, op.off, page) === 'stored') slots.set(op.off, page);
          break;
        }
        case 'inv': store.invalidatePage(area, op.off); slots.delete(op.off); break;
        case 'compact': store.compact(); break;
      }
      store.checkInvariants();
    }
    for (let off = 0; off < PAGES; off++) {
      const want = slots.get(off);
      assert.equal(store.load(area, off, into), want === undefined ? 'miss' : 'hit', `slot ${off}`);
      if (want !== undefined) assert.ok(into.equals(want), `persistent slot ${off} content`);
    }
    for (let p = 0; p < 2; p++) for (let k = 0; k < KEYS.length; k++) for (let i = 0; i < INDEXES.length; i++) getCheck(p, k, i);
    const s = store.stats();
    if (exact) assert.equal(s.ephemeral_pages, eph.size, 'ephemeral_pages = the model\'s keys');
    seen.evicted += s.ephemeral_evicted_pages;
    seen.rejected += s.ephemeral_put_rejected;
    assert.ok(s.ephemeral_pages >= 0 && s.duplicate_pages >= 0);
    store.checkInvariants();
  } finally {
    void store.close();
  }
}

for (const codec of ['lz4', 'zstd:1', 'none']) {
  for (const sharedDedup of [false, true]) {
    test(`ephemeral pools match a plain model without pressure: a put is then a hit (${codec}, sharedDedup=${sharedDedup})`, () => {
      fc.assert(fc.property(fc.array(opArb, { minLength: 10, maxLength: 120, size: 'max' }), (ops) => {
        run({ codec, sharedDedup }, ops, true);
      }), { numRuns: 60 });
    });
  }
}

test('ephemeral pools under pressure and forced fingerprint collisions: a get returns the last put or misses, persistent pages always load', () => {
  fc.assert(fc.property(fc.array(opArb, { minLength: 20, maxLength: 200, size: 'max' }), fc.boolean(), fc.boolean(), (ops, collide, sharedDedup) => {
    // 16-page arenas, a 1-arena pool: puts and stores run into the limit all the time.
    run({ arenaBytes: 64 << 10, maxPoolBytes: 64 << 10, sharedDedup, ...(collide ? { fingerprint: () => 42n } : {}) }, ops, false);
  }), { numRuns: 150 });
  assert.ok(seen.evicted > 0, 'the pressure runs evicted ephemeral pages');
});

test('ephemeral pools under pressure with the compression stage (staged objects shared with entries, installs that drop entries for room)', () => {
  fc.assert(fc.property(fc.array(opArb, { minLength: 20, maxLength: 200, size: 'max' }), fc.boolean(), (ops, sharedDedup) => {
    // A 2-slot stage with a real worker: installs happen inside later stores (a full stage is
    // drained first) while a 1-arena pool keeps hitting its limit, so an install can make room
    // by dropping ephemeral entries, one of which may hold the last reference to another staged object.
    run({ arenaBytes: 64 << 10, maxPoolBytes: 64 << 10, sharedDedup, compressThreads: 1, stageSlots: 2 }, ops, false);
  }), { numRuns: 100 });
});

test('ephemeral pools beside a disk tier (objects shared with slots that went to the tier): get returns the last put or misses', () => {
  const dir = mkdtempSync(join(tmpdir(), 'zdedup-eph-prop-'));
  try {
    fc.assert(fc.property(fc.array(opArb, { minLength: 20, maxLength: 150, size: 'max' }), (ops) => {
      rmSync(join(dir, 'b.img'), { force: true });
      run({
        arenaBytes: 64 << 10, maxPoolBytes: 64 << 10, sharedDedup: true, background: false,
        backing: { path: join(dir, 'b.img'), size: 4096 + 32 * (32 << 10), segmentSize: 32 << 10 },
      }, ops, false);
    }), { numRuns: 60 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('ephemeral API validates pools, keys and indexes at the edge', () => {
  const store = new PageStore();
  const p = store.createPool('p', { ephemeral: true });
  const a = store.createArea('a', 4);
  const page = Buffer.alloc(4096, 1);
  assert.throws(() => store.createPool('p', { ephemeral: true }), { code: 'ERR_AREA_EXISTS' });
  assert.throws(() => store.createPool('q', {} as { ephemeral: true }), { code: 'ERR_INVALID_ARGUMENT' });
  assert.throws(() => store.put(a as unknown as PoolId, 0, 0, page), { code: 'ERR_UNKNOWN_AREA' }, 'an area is not a pool');
  assert.throws(() => store.store(p as unknown as AreaId, 0, page), { code: 'ERR_UNKNOWN_AREA' }, 'a pool is not an area');
  assert.throws(() => store.put(p, -1, 0, page), { code: 'ERR_INVALID_ARGUMENT' });
  assert.throws(() => store.put(p, 1n << 64n, 0, page), { code: 'ERR_INVALID_ARGUMENT' });
  assert.throws(() => store.put(p, 0, 2 ** 32, page), { code: 'ERR_INVALID_ARGUMENT' });
  assert.throws(() => store.put(p, 0, 0, Buffer.alloc(100)), { code: 'ERR_PAGE_LENGTH' });
  assert.throws(() => store.get(p, 0, 0, Buffer.alloc(100)), { code: 'ERR_PAGE_LENGTH' });
  assert.equal(store.poolNamed('p'), p);
  assert.throws(() => store.poolNamed('nope'), { code: 'ERR_UNKNOWN_AREA' });
  assert.deepEqual(store.areas().map((x) => x.name), ['a'], 'pools are not listed as areas');
});

test('ephemeral entries share objects with persistent slots and with each other (one dedup domain)', () => {
  const store = new PageStore({ sharedDedup: true });
  const a = store.createArea('a', 4);
  const p = store.createPool('p', { ephemeral: true });
  const page = makePage('text', 3);
  assert.equal(store.store(a, 0, page), 'stored');
  for (let k = 0; k < 4; k++) assert.equal(store.put(p, k, 7, page), 'stored');
  let s = store.stats();
  assert.equal(s.unique_objects, 1, 'one object for a slot and four entries');
  assert.equal(s.ephemeral_pages, 4);
  assert.equal(s.duplicate_pages, 4);
  const wide = Buffer.alloc(3 * 4096, 0xee);
  assert.equal(store.get(p, 2, 7, wide, 4096), 'hit', 'get at a byte offset of a larger buffer');
  assert.ok(wide.subarray(4096, 8192).equals(page) && wide[0] === 0xee && wide[8192] === 0xee);
  assert.throws(() => store.get(p, 2, 7, wide, 2 * 4096 + 1), { code: 'ERR_PAGE_LENGTH' });
  store.flushPool(p);
  s = store.stats();
  assert.equal(s.unique_objects, 1, 'flushing the entries keeps the slot\'s object');
  const into = Buffer.alloc(4096);
  assert.equal(store.load(a, 0, into), 'hit');
  assert.ok(into.equals(page));
  store.checkInvariants();
});
