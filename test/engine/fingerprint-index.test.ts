import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { FingerprintIndex, KeyColumns } from '../../src/engine/dedup/index.js';

/** Every id with a given fingerprint, through the probe cursor. */
function lookup(ix: FingerprintIndex, lo: number, hi: number): number[] {
  const out: number[] = [];
  ix.probeStart(lo, hi);
  for (let id = ix.probeNext(); id >= 0; id = ix.probeNext()) out.push(id);
  return out.sort((a, b) => a - b);
}

test('fingerprint index matches a model under inserts, removes, growth, shrinking and wrap-around', () => {
  fc.assert(
    fc.property(
      fc.array(fc.record({ add: fc.boolean(), id: fc.nat(3000), key: fc.nat(40) }), { minLength: 50, maxLength: 4000, size: 'max' }),
      (ops) => {
        const keys = new KeyColumns();
        keys.ensure(3001);
        const ix = new FingerprintIndex(keys, 16);
        const model = new Map<number, number>(); // id -> key
        // few distinct keys, spread over the whole 32-bit range (some near 2^32 - 1 to wrap)
        const lo = (k: number) => (k === 0 ? 0xffffffff : (k * 0x9e3779b1) >>> 0);
        for (const op of ops) {
          if (op.add && !model.has(op.id)) {
            keys.lo[op.id] = lo(op.key); keys.hi[op.id] = op.key % 3;
            ix.insert(op.id); model.set(op.id, op.key);
          } else if (!op.add && model.has(op.id)) {
            assert.ok(ix.remove(op.id)); model.delete(op.id);
          }
        }
        assert.equal(ix.size, model.size);
        for (let k = 0; k <= 40; k++) {
          for (let h = 0; h < 3; h++) {
            const want = [...model].filter(([, key]) => key === k && key % 3 === h).map(([id]) => id).sort((a, b) => a - b);
            assert.deepEqual(lookup(ix, lo(k), h), want);
          }
        }
      },
    ),
    { numRuns: 40 },
  );
});

/** xorshift32 for the long model runs (fast-check picks the seeds). */
function rng(seed: number): (n: number) => number {
  let s = seed >>> 0 || 1;
  return (n) => {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    return s % n;
  };
}

/**
 * Key k's fingerprint: hi = k makes (lo, hi) unique per key; lo puts 1 key in 64 in the last cell
 * of every table (a run that wraps around) and spreads the rest.
 */
function fpLo(k: number): number {
  return k % 64 === 0 ? (0xffffffff - (k % 50)) >>> 0 : Math.imul(k, 0x9e3779b1) >>> 0;
}

test('fingerprint index matches a model across many grow/shrink cycles, probed and changed while it resizes', () => {
  const MAX_ID = 40_000;
  let resizesSeen = 0, growsSeen = 0, shrinksSeen = 0, probesWhileResizing = 0, removesWhileResizing = 0;
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 0x7fffffff }), fc.constantFrom(50, 3000, 1_000_000), (seed, keySpace) => {
      const r = rng(seed);
      const keys = new KeyColumns();
      keys.ensure(MAX_ID);
      const ix = new FingerprintIndex(keys, 16);
      const keyOf = new Map<number, number>(); // live id -> key
      const byKey = new Map<number, Set<number>>(); // key -> live ids
      const live: number[] = []; // live ids, for picking one at random
      const free: number[] = [];
      for (let id = MAX_ID - 1; id >= 0; id--) free.push(id);
      const check = (k: number) => {
        const want = [...(byKey.get(k) ?? [])].sort((a, b) => a - b);
        assert.deepEqual(lookup(ix, fpLo(k), k), want, `key ${k}, size ${ix.size}, resizing ${ix.resizing}`);
      };
      const insert = () => {
        const id = free.pop()!;
        const k = r(keySpace);
        keys.lo[id] = fpLo(k); keys.hi[id] = k;
        ix.insert(id);
        keyOf.set(id, k); live.push(id);
        let s = byKey.get(k); if (!s) byKey.set(k, (s = new Set())); s.add(id);
      };
      const remove = () => {
        const i = r(live.length);
        const id = live[i]!;
        live[i] = live[live.length - 1]!; live.pop();
        const k = keyOf.get(id)!;
        if (ix.resizing) removesWhileResizing++;
        assert.ok(ix.remove(id), `remove ${id}`);
        keyOf.delete(id); byKey.get(k)!.delete(id);
        free.push(id);
        keys.lo[id] = 0xdeadbeef; keys.hi[id] = 0xdeadbeef; // a freed id's key is reused (the free chain)
        assert.equal(ix.remove(id), false, `second remove of ${id}`);
      };
      let wasResizing = false, bytesBefore = ix.bytes(), sizeAtStart = 0;
      let ops = 0;
      const step = (growing: boolean) => {
        const sizeBefore = ix.size;
        if (live.length === 0 || (free.length > 0 && r(100) < (growing ? 75 : 25))) insert(); else remove();
        ops++;
        if (ix.resizing) {
          if (!wasResizing) { resizesSeen++; sizeAtStart = sizeBefore; if (growing) growsSeen++; else shrinksSeen++; bytesBefore = ix.bytes(); }
          // probe live keys (hits across both tables) and absent ones (misses walk both)
          probesWhileResizing++;
          if (live.length > 0) check(keyOf.get(live[r(live.length)]!)!);
          check(r(keySpace));
        } else if (wasResizing) {
          assert.ok(ix.bytes() < bytesBefore, 'dropping the old table lowers bytes()');
          assert.ok(ops > 1 && Math.abs(ix.size - sizeAtStart) >= 0, 'resize ended');
        }
        wasResizing = ix.resizing;
        if (ops % 997 === 0) ix.checkInvariants();
      };
      for (let cycle = 0; cycle < 4; cycle++) {
        const high = 4000 + r(20_000), low = r(300);
        while (ix.size < high) step(true);
        ix.checkInvariants();
        for (let k = 0; k < Math.min(keySpace, 200); k++) check(k);
        while (ix.size > low) step(false);
        ix.checkInvariants();
        for (let k = 0; k < Math.min(keySpace, 200); k++) check(k);
      }
      assert.equal(ix.size, live.length);
    }),
    { numRuns: 8 },
  );
  // The runs did exercise what they claim to (else this test could not fail on a broken resize).
  assert.ok(growsSeen > 20 && shrinksSeen > 8, `grows ${growsSeen}, shrinks ${shrinksSeen}`);
  assert.ok(probesWhileResizing > 10_000 && removesWhileResizing > 1000, `probes ${probesWhileResizing}, removes ${removesWhileResizing} while resizing (${resizesSeen} resizes)`);
});

test('fingerprint index spreads a resize over many calls (no all-at-once rehash)', () => {
  const N = 300_000;
  const keys = new KeyColumns();
  keys.ensure(N);
  const ix = new FingerprintIndex(keys, 16);
  let longest = 0, run = 0, resizes = 0;
  for (let id = 0; id < N; id++) {
    keys.lo[id] = Math.imul(id + 1, 0x9e3779b1) >>> 0; keys.hi[id] = id;
    const before = ix.bytes();
    ix.insert(id);
    if (ix.resizing) { if (run === 0) resizes++; run++; } else run = 0;
    longest = Math.max(longest, run);
    // one insert allocates at most one new table (1.25x): it never holds a third table or rehashes twice
    assert.ok(ix.bytes() <= before * 2.25 + 4096, `bytes ${before} -> ${ix.bytes()}`);
  }
  // the last grow before 300 K moves ~300 K / 0.8 cells at 16 per call: thousands of calls
  assert.ok(resizes > 30, `resizes ${resizes}`);
  assert.ok(longest > 5000, `longest resize lasted ${longest} inserts`);
  for (let id = 0; id < N; id += 7) {
    ix.probeStart(keys.lo[id]!, keys.hi[id]!);
    assert.equal(ix.probeNext(), id);
    assert.equal(ix.probeNext(), -1);
  }
  // shrink the same way
  longest = 0; run = 0;
  for (let id = 0; id < N - 100; id++) {
    assert.ok(ix.remove(id));
    if (ix.resizing) run++; else run = 0;
    longest = Math.max(longest, run);
  }
  assert.ok(longest > 1000, `longest shrink lasted ${longest} removes`);
  ix.checkInvariants();
  assert.equal(ix.size, 100);
});
