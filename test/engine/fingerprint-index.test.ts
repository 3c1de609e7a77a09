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
