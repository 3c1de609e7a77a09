/**
 * The operations property tests run against a page store and a plain model (one Map of page
 * contents per area), and their check: what a load returns must be what the model holds.
 */
import assert from 'node:assert/strict';
import type { AreaId, PageStore, StoreResult } from '../../src/core/page-store.js';

export type ModelOp =
  | { t: 'store'; area: number; off: number; kind: number; v: number; async: boolean }
  | { t: 'load'; area: number; off: number; async: boolean }
  | { t: 'inv'; area: number; off: number; n: number }
  | { t: 'invArea'; area: number };

/**
 * Applies one operation to the store and the model. `page(kind, v)` makes a store's content;
 * `refused(r)` is told of a store the store refused (the model keeps the slot's old content).
 */
export async function applyModelOp(store: PageStore, areas: AreaId[], model: Map<number, Buffer>[], op: ModelOp,
  page: (kind: number, v: number) => Buffer, refused: (r: StoreResult) => void): Promise<void> {
  switch (op.t) {
    case 'store': {
      const p = page(op.kind, op.v);
      const r = op.async ? await store.storeAsync(areas[op.area]!, op.off, p) : store.store(areas[op.area]!, op.off, p);
      if (r === 'stored') model[op.area]!.set(op.off, p);
      else refused(r);
      break;
    }
    case 'load': {
      const into = Buffer.alloc(store.pageSize, 0xee);
      const r = op.async ? await store.loadAsync(areas[op.area]!, op.off, into) : store.load(areas[op.area]!, op.off, into);
      const want = model[op.area]!.get(op.off);
      assert.equal(r, want === undefined ? 'miss' : 'hit');
      if (want !== undefined) assert.ok(into.equals(want), `area ${op.area} page ${op.off}: load differs`);
      break;
    }
    case 'inv': {
      const n = Math.min(op.n, store.areaPages(areas[op.area]!) - op.off);
      store.invalidateRange(areas[op.area]!, op.off, n);
      for (let i = 0; i < n; i++) model[op.area]!.delete(op.off + i);
      break;
    }
    case 'invArea': store.invalidateArea(areas[op.area]!); model[op.area]!.clear(); break;
  }
}

/**
 * Loads all `pages` pages of every area in one async batch and compares each with the model (a
 * page never stored reads as zeroes), then checks the store's live-slot count, that nothing failed
 * to decompress, and its white-box invariants.
 */
export async function checkAreasAgainstModel(store: PageStore, areas: AreaId[], model: Map<number, Buffer>[], pages: number): Promise<void> {
  const P = store.pageSize;
  for (let a = 0; a < areas.length; a++) {
    const all = Buffer.alloc(pages * P, 0xee);
    const hits = await store.startLoadBatch(areas[a]!, 0, pages, all);
    assert.equal(hits, model[a]!.size, `area ${a}: hits`);
    for (let off = 0; off < pages; off++) {
      const want = model[a]!.get(off) ?? Buffer.alloc(P);
      assert.ok(all.subarray(off * P, (off + 1) * P).equals(want), `area ${a} page ${off} differs`);
    }
  }
  const s = store.stats();
  assert.equal(s.stored_pages, model.reduce((n, m) => n + m.size, 0), 'stored_pages = live slots');
  assert.equal(s.decompress_fail, 0);
  store.checkInvariants();
}
