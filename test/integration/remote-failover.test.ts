/**
 * Failover under load: a store whose RAM pool holds a few dozen pages writes and reads through a
 * real 6-node Redis Cluster (cluster-node-timeout 1 s) with background writeback, as `zdedup
 * serve` runs it. Four writers (disjoint slot ranges) and four readers run while one master is
 * killed with SIGKILL; its replica takes over, the killed node is restarted and rejoins as a
 * replica. Reads during the failover may fail (EIO, bounded) but never return a page that was
 * not written; afterwards every acknowledged page reads back intact.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { PageStore } from '../../src/core/page-store.js';
import { RemoteTier } from '../../src/tiers/remote/remote-tier.js';
import { ZdedupError } from '../../src/errors.js';
import { makePage } from '../helpers/pages.js';
import { RedisCluster, redisMissing } from '../helpers/redis-cluster.js';

const skip = redisMissing();
let cluster: RedisCluster;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

before(async () => { if (!skip) cluster = await RedisCluster.start({ nodeTimeoutMs: 1000 }); });
after(async () => { await cluster?.stop(); });

const SLOTS = 4096;
const WRITERS = 4;

test('kill -9 of a master during writes and reads: every acknowledged page reads back intact', { skip, timeout: 180_000 }, async () => {
  const tier = new RemoteTier({ url: cluster.url, domain: 'failover', secret: Buffer.from('failover-test-secret-0123456789'), pageSize: 4096, timeoutMs: 1500, inflightBytes: 4 << 20 });
  const store = new PageStore({ maxPoolBytes: 256 << 10, arenaBytes: 64 << 10, tier, background: true });
  const area = store.createArea('vm', SLOTS);
  const model = new Int32Array(SLOTS).fill(-1);    // acknowledged version per slot (-1: never written)
  const writing = new Int32Array(SLOTS).fill(-1);  // version of a write in flight
  let stop = false;
  let phase = 0; // 0 before the kill, 1 after it
  const acked = [0, 0], refused = [0, 0], readOk = [0, 0], readEio = [0, 0];
  let version = 0;

  const writer = async (w: number): Promise<void> => {
    const lo = (SLOTS / WRITERS) * w, n = SLOTS / WRITERS;
    let x = w + 1;
    while (!stop) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      const slot = lo + (x % n);
      const v = ++version;
      writing[slot] = v;
      const r = await store.storeAsync(area, slot, makePage(v % 5 === 0 ? 'text' : 'random', v));
      writing[slot] = -1;
      if (r === 'stored') { model[slot] = v; acked[phase]!++; } else refused[phase]!++;
      await new Promise(setImmediate); // a client's next request arrives in a later turn of the event loop
    }
  };
  const reader = async (rd: number): Promise<void> => {
    const into = Buffer.alloc(4096);
    let x = rd + 101;
    while (!stop) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      const slot = x % SLOTS;
      const before = model[slot]!, inFlight = writing[slot]!;
      try {
        const r = await store.loadAsync(area, slot, into);
        const after = model[slot]!;
        if (r === 'miss') { assert.equal(before, -1, `slot ${slot} missed after a write was acknowledged`); continue; }
        const ok = [before, after, inFlight].some((v) => v >= 0 && into.equals(makePage(v % 5 === 0 ? 'text' : 'random', v)));
        assert.ok(ok, `slot ${slot}: a load returned a page that was never written there`);
        readOk[phase]!++;
      } catch (e) {
        if (!(e instanceof ZdedupError) || e.code !== 'ERR_DISK_READ') throw e;
        readEio[phase]!++; // the object's master is failing over: EIO after a bounded wait, never data
      }
      await sleep(1);
    }
  };

  try {
    const workers = [...Array.from({ length: WRITERS }, (_v, i) => writer(i)), ...Array.from({ length: 4 }, (_v, i) => reader(i))];
    await sleep(3000);
    const victim = cluster.masters()[0]!;
    cluster.kill(victim); // SIGKILL
    phase = 1;
    await sleep(6000); // failover (node timeout 1 s) and some traffic on the new master
    await cluster.restart(victim); // rejoins as a replica: the shard can acknowledge WAIT again
    await cluster.waitOk();
    await sleep(3000);
    stop = true;
    await Promise.all(workers);
    assert.ok(!cluster.masters().includes(victim), 'the killed master was replaced by its replica');
    await store.settle();
    await tier.drain();

    const s = store.stats();
    console.log(`# acknowledged ${acked.join('/')} refused ${refused.join('/')} reads ${readOk.join('/')} eio ${readEio.join('/')} ` +
      `remote: stores ${s.remote_stores} loads ${s.remote_loads} retries ${s.remote_retries} errors ${s.remote_errors} lost ${s.remote_lost_objects}`);
    assert.ok(acked[0]! > 100 && acked[1]! > 100, 'writes were acknowledged before and after the kill');
    assert.ok(readOk[1]! > 0, 'reads were served after the kill');
    assert.ok(s.remote_objects > s.unique_objects / 2, `most pages live in the cluster (${s.remote_objects} of ${s.unique_objects})`);
    assert.equal(s.remote_lost_objects, 0, 'no object lost');

    // Every acknowledged page, read back (from the cluster for most of them).
    const into = Buffer.alloc(4096);
    let checked = 0;
    for (let slot = 0; slot < SLOTS; slot++) {
      const v = model[slot]!;
      if (v < 0) continue;
      assert.equal(await store.loadAsync(area, slot, into), 'hit');
      assert.ok(into.equals(makePage(v % 5 === 0 ? 'text' : 'random', v)), `slot ${slot}: acknowledged version ${v} intact`);
      checked++;
    }
    assert.ok(checked > SLOTS / 2, `${checked} slots checked`);
    store.checkInvariants();
  } finally {
    stop = true;
    await store.close();
  }
});
