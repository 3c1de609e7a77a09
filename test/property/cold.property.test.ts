/**
 * Property test of the cold tier: cold-after 0, groups of 2 or 3 pages and 2 KiB cold segments,
 * so every settle recompresses idle objects into groups, loads decompress groups (a second load
 * promotes the page back to the pool), invalidations leave garbage inside groups and the
 * cleaner merges and moves groups. Random sequences of stores, loads, invalidations and
 * background steps run against a plain model; after every step every page equals the model and
 * the white-box invariants hold (group membership, live counts, cold bytes). A variant adds a
 * bounded pool over a disk tier, so cold groups are written back to disk.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { PageStore, type AreaId } from '../../src/core/page-store.js';
import { applyModelOp, checkAreasAgainstModel, type ModelOp } from '../helpers/model-ops.js';
import { fillRandom, makePage, type Kind } from '../helpers/pages.js';

const PAGES = 32;
const KINDS_C: (Kind | 'half')[] = ['text', 'text', 'text', 'dup', 'zero', 'random', 'half'];

/** A page lz4 shrinks but zstd of a group barely beats: half random, half text. */
function pageOf(kind: Kind | 'half', v: number): Buffer {
  if (kind !== 'half') return makePage(kind, v);
  const p = makePage('text', v);
  fillRandom(p.subarray(0, 2048), v + 7);
  return p;
}

type Op = ModelOp | { t: 'step' };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 10, arbitrary: fc.record({ t: fc.constant('store' as const), area: fc.nat(1), off: fc.nat(PAGES - 1), kind: fc.nat(KINDS_C.length - 1), v: fc.nat(200), async: fc.boolean() }) },
  { weight: 5, arbitrary: fc.record({ t: fc.constant('load' as const), area: fc.nat(1), off: fc.nat(PAGES - 1), async: fc.boolean() }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('inv' as const), area: fc.nat(1), off: fc.nat(PAGES - 1), n: fc.integer({ min: 1, max: 6 }) }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('invArea' as const), area: fc.nat(1) }) },
  { weight: 4, arbitrary: fc.record({ t: fc.constant('step' as const) }) },
);

async function checkAll(store: PageStore, areas: AreaId[], model: Map<number, Buffer>[]): Promise<void> {
  await checkAreasAgainstModel(store, areas, model, PAGES);
  assert.equal(store.stats().disk_read_errors, 0);
}

for (const tiered of [false, true]) {
  test(`cold tier matches a plain model through grouping, group loads, invalidation inside groups and cleaning (disk tier: ${tiered})`, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'zdedup-cold-prop-'));
    let runs = 0;
    const saw = { grouped: 0, loads: 0, promoted: 0, cleaned: 0, skipped: 0, writtenBack: 0, settledPending: 0 };
    try {
      await fc.assert(
        fc.asyncProperty(fc.array(opArb, { minLength: 20, maxLength: 100, size: 'max' }), fc.integer({ min: 2, max: 3 }), async (ops, group) => {
          const store = new PageStore({
            background: false,
            cold: { codec: 'zstd:3', afterSeconds: 0, groupPages: group, segmentBytes: 2048 },
            ...(tiered ? {
              arenaBytes: 64 << 10, maxPoolBytes: 128 << 10,
              backing: { path: join(dir, `b${runs++}.img`), size: 4096 + 8 * (32 << 10), segmentSize: 32 << 10 },
            } : {}),
          });
          try {
            const areas = [store.createArea('a', PAGES), store.createArea('b', PAGES)];
            const model = [new Map<number, Buffer>(), new Map<number, Buffer>()];
            for (const op of ops) {
              if (op.t === 'step') await store.settle();
              else await applyModelOp(store, areas, model, op, (kind, v) => pageOf(KINDS_C[kind]!, v), (r) => assert.ok(tiered && r === 'reject_reclaim_fail', `store refused: ${r}`));
              store.checkInvariants();
            }
            await checkAll(store, areas, model);
            await store.settle();
            await checkAll(store, areas, model);
            await store.settle(); // the check's loads may have promoted pages: settle again
            const s = store.stats();
            saw.grouped += s.cold_groups_written; saw.loads += s.cold_loads; saw.promoted += s.cold_promoted_pages;
            saw.cleaned += s.cold_cleaned_segments; saw.skipped += s.cold_skipped_pages; saw.writtenBack += s.cold_written_back_pages;
            if (!tiered) {
              assert.equal(s.cold_pending_pages, 0, 'settled: nothing waits for its cold pass');
              saw.settledPending++;
            }
          } finally {
            await store.close();
          }
        }),
        { numRuns: 80 },
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    console.log(`# ${JSON.stringify(saw)}`);
    assert.ok(saw.grouped > 0, 'groups were written');
    assert.ok(saw.loads > 0, 'loads were served from groups');
    assert.ok(saw.promoted > 0, 'second loads promoted pages');
    // With the disk tier the writer takes most cold groups to disk before garbage makes their
    // segments worth cleaning (4-7 cleanings in 80 runs, sometimes 0): cleaning coverage comes from
    // the RAM-only variant (~30 per 80 runs); the tiered one still checks every load against the model.
    if (!tiered) assert.ok(saw.cleaned > 0, 'cold segments were cleaned');
    assert.ok(saw.skipped > 0, 'groups zstd could not shrink stayed hot');
    if (tiered) assert.ok(saw.writtenBack > 0, 'cold objects were written back to the disk tier');
  });
}
