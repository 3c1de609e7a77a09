import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ZsPool, type ObjectId } from '../../src/engine/alloc/zspool.js';
import { buildClassTable, classFor } from '../../src/engine/alloc/size-class.js';
import { fillRandom } from '../helpers/pages.js';

test('size classes cover every length and never exceed the chain', () => {
  for (const P of [4096, 65536]) {
    const t = buildClassTable(P);
    for (let len = 1; len <= P; len++) {
      const c = classFor(t, len);
      assert.ok(t.size[c]! >= len);
      assert.ok(t.objsPerZspage[c]! * t.size[c]! <= t.chain[c]! * P);
    }
  }
});

test('fill / free / compact keeps every live object byte-identical and releases empty arenas', () => {
  const P = 4096;
  const pool = new ZsPool(P);
  const N = 6000;
  pool.ensureIds(N);
  const lens = new Uint16Array(N);
  const content = (id: number, len: number) => { const b = Buffer.alloc(len); fillRandom(b, id * 7919 + 1); return b; };
  let x = 12345;
  const rnd = () => { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; return (x >>> 0) / 2 ** 32; };
  for (let id = 0; id < N; id++) {
    const len = 1 + Math.floor(rnd() * 3584);
    lens[id] = len;
    assert.equal(pool.alloc(id as ObjectId, len), 'ok');
    pool.locate(id as ObjectId);
    content(id, len).copy(pool.locBuf, pool.locOff);
  }
  pool.checkInvariants();
  const full = pool.totalSize();
  // free 85% at random: sparse zspages everywhere
  const live = new Set<number>();
  for (let id = 0; id < N; id++) { if (rnd() < 0.85) pool.free(id as ObjectId); else live.add(id); }
  pool.checkInvariants();
  const beforeCompact = pool.totalSize();
  const r = pool.compact(1 << 30); // one unbounded step: everything that can move, moves
  pool.checkInvariants();
  assert.ok(r.moved_objects > 0, 'objects moved');
  assert.ok(r.freed_zspages > 0, 'zspages freed');
  assert.ok(pool.totalSize() < beforeCompact, `compaction released arenas (${beforeCompact} -> ${pool.totalSize()})`);
  assert.ok(pool.totalSize() < full);
  for (const id of live) {
    pool.locate(id as ObjectId);
    assert.ok(pool.locBuf.subarray(pool.locOff, pool.locOff + lens[id]!).equals(content(id, lens[id]!)), `object ${id} intact`);
  }
  for (const id of live) pool.free(id as ObjectId);
  pool.checkInvariants();
  assert.equal(pool.totalSize(), 0, 'all arenas returned');
  assert.equal(pool.liveZspages, 0);
});

test('compaction in bounded steps converges to the same result', () => {
  const P = 4096;
  const pool = new ZsPool(P);
  const N = 20000;
  pool.ensureIds(N);
  let x = 777;
  const rnd = () => { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; return (x >>> 0) / 2 ** 32; };
  const lens = new Uint16Array(N);
  for (let id = 0; id < N; id++) {
    lens[id] = 1 + Math.floor(rnd() * 3584);
    assert.equal(pool.alloc(id as ObjectId, lens[id]!), 'ok');
    pool.locate(id as ObjectId);
    const b = Buffer.alloc(lens[id]!); fillRandom(b, id + 1); b.copy(pool.locBuf, pool.locOff);
  }
  const live: number[] = [];
  for (let id = 0; id < N; id++) { if (rnd() < 0.7) pool.free(id as ObjectId); else live.push(id); }
  const before = pool.totalSize();
  let steps = 0;
  for (;;) {
    const r = pool.compact(500); // small budget: many steps
    pool.checkInvariants();
    steps++;
    if (r.moved_objects === 0 && r.moved_zspages === 0 && r.freed_arenas === 0) break;
    assert.ok(r.moved_objects <= 500 + 1024, 'a step stays near its budget (it finishes the zspage it started)');
  }
  assert.ok(steps > 3, `took ${steps} steps`);
  assert.ok(pool.totalSize() < before * 0.6, `pool shrank: ${before} -> ${pool.totalSize()}`);
  for (const id of live) {
    pool.locate(id as ObjectId);
    const b = Buffer.alloc(lens[id]!); fillRandom(b, id + 1);
    assert.ok(pool.locBuf.subarray(pool.locOff, pool.locOff + lens[id]!).equals(b), `object ${id} intact`);
  }
});
