/**
 * Property test of the tiered store: a pool of a few zspages (one 64 KiB arena at most)
 * over a disk tier of tiny segments (32 KiB), so writeback, stores that bypass the pool, tier
 * reads, promotion and segment cleaning happen on almost every step. Random sequences of stores
 * (sync and async), loads (sync and async), invalidations and background steps run against a
 * plain model; after every step every load equals the model, counters agree and the white-box
 * invariants hold (object locations, LRU list, pool, segment live/used bytes).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { PageStore, type AreaId } from '../../src/core/page-store.js';
import { applyModelOp, type ModelOp } from '../helpers/model-ops.js';
import { makePage, type Kind } from '../helpers/pages.js';

const PAGES = 40;
const KINDS_T: Kind[] = ['random', 'random', 'random', 'text', 'dup', 'zero', 'same'];

type Op = ModelOp | { t: 'step'; n: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 10, arbitrary: fc.record({ t: fc.constant('store' as const), area: fc.nat(1), off: fc.nat(PAGES - 1), kind: fc.nat(KINDS_T.length - 1), v: fc.nat(60), async: fc.boolean() }) },
  { weight: 4, arbitrary: fc.record({ t: fc.constant('load' as const), area: fc.nat(1), off: fc.nat(PAGES - 1), async: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('inv' as const), area: fc.nat(1), off: fc.nat(PAGES - 1), n: fc.integer({ min: 1, max: 8 }) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('invArea' as const), area: fc.nat(1) }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('step' as const), n: fc.integer({ min: 1, max: 6 }) }) },
);

async function checkAll(store: PageStore, areas: AreaId[], model: Map<number, Buffer>[]): Promise<void> {
  const into = Buffer.alloc(store.pageSize);
  for (let a = 0; a < areas.length; a++) {
    // async batch load of the whole area, then spot checks with the sync call
    const all = Buffer.alloc(PAGES * store.pageSize, 0xee);
    const hits = await store.startLoadBatch(areas[a]!, 0, PAGES, all);
    assert.equal(hits, model[a]!.size, `area ${a}: hits`);
    for (let off = 0; off < PAGES; off++) {
      const want = model[a]!.get(off) ?? Buffer.alloc(store.pageSize);
      assert.ok(all.subarray(off * store.pageSize, (off + 1) * store.pageSize).equals(want), `area ${a} page ${off} differs (batch)`);
    }
    const off = (a * 7) % PAGES;
    const r = store.load(areas[a]!, off, into);
    assert.equal(r, model[a]!.has(off) ? 'hit' : 'miss');
    if (r === 'hit') assert.ok(into.equals(model[a]!.get(off)!), `area ${a} page ${off} differs (sync)`);
  }
  const s = store.stats();
  const live = model[0]!.size + model[1]!.size;
  assert.equal(s.stored_pages, live, 'stored_pages = live slots');
  assert.ok(s.pool_total_size <= s.max_pool_bytes, `pool ${s.pool_total_size} within its limit ${s.max_pool_bytes}`);
  assert.equal(s.disk_read_errors, 0);
  assert.equal(s.decompress_fail, 0);
  store.checkInvariants();
}

for (const writethrough of [false, true]) {
  test(`tiered store matches a plain model under constant writeback and cleaning (writethrough=${writethrough})`, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'zdedup-tier-prop-'));
    let runs = 0;
    let refused = 0;
    let sawWriteback = 0, sawCleaning = 0, sawDiskLoads = 0, sawPromotion = 0, sawBypass = 0;
    try {
      await fc.assert(
        fc.asyncProperty(fc.array(opArb, { minLength: 20, maxLength: 120, size: 'max' }), async (ops) => {
          const store = new PageStore({
            arenaBytes: 64 << 10, maxPoolBytes: 64 << 10, writethrough, background: false,
            backing: { path: join(dir, `b${runs++}.img`), size: 4096 + 6 * (32 << 10), segmentSize: 32 << 10 },
          });
          try {
            const areas = [store.createArea('a', PAGES), store.createArea('b', PAGES)];
            const model = [new Map<number, Buffer>(), new Map<number, Buffer>()];
            for (const op of ops) {
              if (op.t === 'step') for (let i = 0; i < op.n; i++) await store.settle();
              // Refusals: a sync store may find both write buffers in flight, and the tiny disk
              // may be full of live data. Either way the slot must keep its old content.
              else await applyModelOp(store, areas, model, op, (kind, v) => makePage(KINDS_T[kind]!, v), (r) => { assert.equal(r, 'reject_reclaim_fail', `store refused: ${r}`); refused++; });
              await checkAll(store, areas, model);
            }
            await store.settle();
            await checkAll(store, areas, model);
            const s = store.stats();
            sawWriteback += s.written_back_pages + s.evicted_clean_pages; sawCleaning += s.cleaned_segments;
            sawDiskLoads += s.disk_loads; sawPromotion += s.promoted_pages; sawBypass += s.pool_bypass_pages;
          } finally {
            await store.close();
          }
        }),
        { numRuns: 100 },
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    // The test must have exercised what it claims to.
    assert.ok(sawWriteback > 0, 'writeback happened');
    assert.ok(sawDiskLoads > 0, 'loads read the disk');
    assert.ok(sawBypass > 0, 'stores bypassed a full pool');
    assert.ok(sawPromotion > 0, 'pages were promoted');
    assert.ok(sawCleaning > 0, 'segments were cleaned');
    console.log(`# writeback ${sawWriteback}, disk loads ${sawDiskLoads}, bypass ${sawBypass}, promoted ${sawPromotion}, cleaned ${sawCleaning}, refused ${refused}`);
  });
}
