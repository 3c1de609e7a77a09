/**
 * Property test of the store over the remote tier on a real 6-node Redis Cluster: a RAM pool of
 * one 64 KiB arena, so writeback to the cluster, stores that bypass the pool, remote loads,
 * promotion and remote dedup happen on almost every step. Random sequences of stores (sync and
 * async), async loads, invalidations and background steps run against a plain model; after every
 * step every load equals the model and the white-box invariants hold. Every run shares one
 * domain and secret, so later runs find their content already in the cluster (remote dedup hits).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { PageStore, type AreaId } from '../../src/core/page-store.js';
import { RemoteTier } from '../../src/tiers/remote/remote-tier.js';
import { makePage, type Kind } from '../helpers/pages.js';
import { RedisCluster, redisMissing } from '../helpers/redis-cluster.js';
import { checkAreasAgainstModel } from '../helpers/model-ops.js';

const PAGES = 40;
const KINDS_T: Kind[] = ['random', 'random', 'random', 'text', 'dup', 'zero', 'same'];
const skip = redisMissing();
let cluster: RedisCluster;

before(async () => { if (!skip) cluster = await RedisCluster.start(); });
after(async () => { await cluster?.stop(); });

type Op =
  | { t: 'store'; area: number; off: number; kind: number; v: number; async: boolean }
  | { t: 'load'; area: number; off: number }
  | { t: 'inv'; area: number; off: number; n: number }
  | { t: 'step'; drain: boolean };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 10, arbitrary: fc.record({ t: fc.constant('store' as const), area: fc.nat(1), off: fc.nat(PAGES - 1), kind: fc.nat(KINDS_T.length - 1), v: fc.nat(200), async: fc.boolean() }) },
  { weight: 4, arbitrary: fc.record({ t: fc.constant('load' as const), area: fc.nat(1), off: fc.nat(PAGES - 1) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('inv' as const), area: fc.nat(1), off: fc.nat(PAGES - 1), n: fc.integer({ min: 1, max: 8 }) }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('step' as const), drain: fc.boolean() }) },
);

async function checkAll(store: PageStore, areas: AreaId[], model: Map<number, Buffer>[]): Promise<void> {
  await checkAreasAgainstModel(store, areas, model, PAGES);
  assert.equal(store.stats().remote_errors, 0, 'no remote errors');
}

test('store over a Redis Cluster remote tier matches a plain model (tiny RAM pool)', { skip }, async () => {
  const secret = Buffer.from('property-test-secret-0123456789');
  let sawWriteback = 0, sawRemoteLoads = 0, sawBypass = 0, sawDedup = 0, sawStores = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(opArb, { minLength: 20, maxLength: 80, size: 'max' }), async (ops) => {
      const tier = new RemoteTier({ url: cluster.url, domain: 'prop', secret, pageSize: 4096, leaseMs: 60_000, inflightBytes: 2 << 20 });
      const store = new PageStore({ arenaBytes: 64 << 10, maxPoolBytes: 64 << 10, background: false, tier });
      try {
        const areas = [store.createArea('a', PAGES), store.createArea('b', PAGES)];
        const model = [new Map<number, Buffer>(), new Map<number, Buffer>()];
        for (const op of ops) {
          switch (op.t) {
            case 'store': {
              const p = makePage(KINDS_T[op.kind]!, op.v);
              const r = op.async ? await store.storeAsync(areas[op.area]!, op.off, p) : store.store(areas[op.area]!, op.off, p);
              if (r === 'stored') model[op.area]!.set(op.off, p);
              else assert.equal(r, 'reject_reclaim_fail', `store refused: ${r}`); // a sync store cannot wait for buffers
              break;
            }
            case 'load': {
              const into = Buffer.alloc(4096, 0xee);
              const r = await store.loadAsync(areas[op.area]!, op.off, into);
              const want = model[op.area]!.get(op.off);
              assert.equal(r, want === undefined ? 'miss' : 'hit');
              if (want !== undefined) assert.ok(into.equals(want), 'async load equals the model');
              break;
            }
            case 'inv': {
              const n = Math.min(op.n, PAGES - op.off);
              store.invalidateRange(areas[op.area]!, op.off, n);
              for (let i = 0; i < n; i++) model[op.area]!.delete(op.off + i);
              break;
            }
            case 'step': await store.settle(); if (op.drain) await tier.drain(); break;
          }
          await checkAll(store, areas, model);
        }
        await store.settle();
        await tier.drain(); // every object acknowledged: the checks below read the cluster
        await checkAll(store, areas, model);
        const s = store.stats();
        sawWriteback += s.written_back_pages; sawRemoteLoads += s.remote_loads; sawBypass += s.pool_bypass_pages;
        sawDedup += s.remote_dedup_hits; sawStores += s.remote_stores;
      } finally {
        await store.close();
      }
    }),
    { numRuns: 40 },
  );
  assert.ok(sawWriteback > 0, 'writeback to the cluster happened');
  assert.ok(sawRemoteLoads > 0, 'loads read the cluster');
  assert.ok(sawBypass > 0, 'stores bypassed a full pool');
  assert.ok(sawStores > 0, 'values were uploaded');
  assert.ok(sawDedup > 0, 'later runs found their content in the cluster');
  console.log(`# writeback ${sawWriteback}, remote loads ${sawRemoteLoads}, bypass ${sawBypass}, uploads ${sawStores}, remote dedup ${sawDedup}`);
});
