/**
 * Property test: random sequences of store / overwrite / load / invalidate / invalidateArea over
 * mixed content, against a plain model (Map slot -> bytes). After every step every load equals
 * the model and the stats agree with it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { PageStore, type AreaId } from '../../src/core/page-store.js';
import { KINDS, makePage, type Kind } from '../helpers/pages.js';

const PAGES = 24;

type Op =
  | { t: 'store'; area: number; off: number; kind: Kind; v: number }
  | { t: 'load'; area: number; off: number }
  | { t: 'inv'; area: number; off: number }
  | { t: 'invArea'; area: number }
  | { t: 'zeroRange'; area: number; off: number; n: number }
  | { t: 'compact' };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 8, arbitrary: fc.record({ t: fc.constant('store' as const), area: fc.nat(1), off: fc.nat(PAGES - 1), kind: fc.constantFrom(...KINDS), v: fc.nat(20) }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('load' as const), area: fc.nat(1), off: fc.nat(PAGES - 1) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('inv' as const), area: fc.nat(1), off: fc.nat(PAGES - 1) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('invArea' as const), area: fc.nat(1) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('zeroRange' as const), area: fc.nat(1), off: fc.nat(PAGES - 1), n: fc.nat(5) }) },
  { weight: 1, arbitrary: fc.constant({ t: 'compact' as const }) },
);

function check(store: PageStore, areas: AreaId[], model: Map<string, Buffer>[]): void {
  const into = Buffer.alloc(store.pageSize);
  let live = 0, same = 0;
  for (let a = 0; a < areas.length; a++) {
    for (let off = 0; off < PAGES; off++) {
      const want = model[a]!.get(String(off));
      into.fill(0xee);
      const r = store.load(areas[a]!, off, into);
      if (want === undefined) {
        assert.equal(r, 'miss', `area ${a} page ${off} should miss`);
      } else {
        live++;
        if (want.equals(Buffer.alloc(want.length, want.subarray(0, 8)))) same++;
        assert.equal(r, 'hit', `area ${a} page ${off} should hit`);
        assert.ok(into.equals(want), `area ${a} page ${off} content differs`);
      }
    }
  }
  // per-area counts and kind runs against the model
  for (let a = 0; a < areas.length; a++) {
    const kind = (off: number): number => {
      const p = model[a]!.get(String(off));
      return p === undefined ? 0 : p.every((b) => b === 0) ? 1 : 2;
    };
    const as = store.areaStats(areas[a]!);
    let st = 0, zero = 0;
    for (let off = 0; off < PAGES; off++) { const k = kind(off); if (k) st++; if (k === 1) zero++; }
    assert.equal(as.stored_pages, st, `area ${a} stored_pages`);
    assert.equal(as.zero_pages, zero, `area ${a} zero_pages`);
    assert.equal(as.hole_pages, PAGES - st);
    for (let off = 0; off < PAGES; off += 5) {
      let e = off + 1;
      while (e < PAGES && kind(e) === kind(off)) e++;
      assert.equal(store.kindRunEnd(areas[a]!, off, PAGES), e, `area ${a} run from ${off}`);
      assert.equal(store.pageKind(areas[a]!, off), kind(off));
    }
  }
  const s = store.stats();
  assert.equal(s.stored_pages, live, 'stored_pages = live slots');
  assert.equal(s.same_filled_pages, same, 'same_filled_pages');
  assert.ok(s.unique_objects <= s.stored_pages, 'unique_objects <= stored_pages');
  assert.equal(s.duplicate_pages + s.unique_objects + s.same_filled_pages, s.stored_pages);
  store.checkInvariants(); // refcounts == slot references, pool invariants
}

for (const codec of ['lz4', 'zstd:1', 'none']) {
  for (const sharedDedup of [false, true]) {
    test(`page store matches a plain model (${codec}, sharedDedup=${sharedDedup})`, () => {
      fc.assert(
        fc.property(fc.array(opArb, { minLength: 10, maxLength: 150, size: 'max' }), (ops) => {
          const store = new PageStore({ codec, sharedDedup });
          const areas = [store.createArea('a', PAGES), store.createArea('b', PAGES)];
          const model = [new Map<string, Buffer>(), new Map<string, Buffer>()];
          for (const op of ops) {
            switch (op.t) {
              case 'store': {
                const p = makePage(op.kind, op.v);
                assert.equal(store.store(areas[op.area]!, op.off, p), 'stored');
                model[op.area]!.set(String(op.off), p);
                break;
              }
              case 'load': break; // every step checks all loads below
              case 'inv': store.invalidatePage(areas[op.area]!, op.off); model[op.area]!.delete(String(op.off)); break;
              case 'invArea': store.invalidateArea(areas[op.area]!); model[op.area]!.clear(); break;
              case 'zeroRange': {
                const n = Math.min(op.n, PAGES - op.off);
                store.storeZeroRange(areas[op.area]!, op.off, n);
                for (let i = 0; i < n; i++) model[op.area]!.set(String(op.off + i), Buffer.alloc(4096));
                break;
              }
              case 'compact': store.compact(); break;
            }
            check(store, areas, model);
          }
        }),
        { numRuns: 80 },
      );
    });
  }
}

test('dedup is per area unless sharedDedup', () => {
  const p = makePage('text', 5);
  const isolated = new PageStore();
  const a = isolated.createArea('a', 4), b = isolated.createArea('b', 4);
  isolated.store(a, 0, p); isolated.store(b, 0, p);
  assert.equal(isolated.stats().unique_objects, 2);
  assert.equal(isolated.stats().duplicate_pages, 0);
  const shared = new PageStore({ sharedDedup: true });
  const c = shared.createArea('a', 4), d = shared.createArea('b', 4);
  shared.store(c, 0, p); shared.store(d, 0, p);
  assert.equal(shared.stats().unique_objects, 1);
  assert.equal(shared.stats().duplicate_pages, 1);
});
