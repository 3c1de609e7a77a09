import { test } from 'node:test';
import assert from 'node:assert/strict';
import { grow, growable, type UintArray } from '../../src/engine/alloc/typed.js';

type Resizable = ArrayBuffer & { readonly resizable: boolean; readonly maxByteLength: number };

test('a growable column moves once, out of its first small reservation, then only grows in place', () => {
  let a = growable(Uint32Array);
  assert.ok((a.buffer as Resizable).maxByteLength <= 64 << 10, 'starts in a small reservation');
  let moves = 0;
  for (let n = 1; n <= 5_000_000; n++) {
    if (n > a.length) {
      const b = grow(a, n);
      if (b !== a) { moves++; a = b; }
    }
    a[n - 1] = n;
  }
  assert.equal(moves, 1);
  assert.equal((a.buffer as Resizable).maxByteLength, 2 ** 32 - 1);
  for (let i = 0; i < 5_000_000; i += 997) assert.equal(a[i], i + 1, `entry ${i} kept`);
});

test('a growth step adds a bounded number of entries: at most 1/32 of the column (4096 at least, 64 Ki at most)', () => {
  const columns: [string, UintArray][] = [
    ['Uint8Array', growable(Uint8Array)], ['Uint16Array', growable(Uint16Array)],
    ['Uint32Array', growable(Uint32Array)], ['Int32Array', growable(Int32Array)],
  ];
  for (const [name, first] of columns) {
    let a = first;
    while (a.length < 4_000_000) {
      const old: number = a.length;
      a = grow(a, old + 1);
      const step = a.length - old;
      assert.ok(step >= 1 && step <= Math.max(4096, Math.min(65536, Math.ceil(old / 32))), `${name}: ${old} -> ${a.length}`);
    }
    // a large column's idle tail is at most 64 Ki entries
    assert.ok(a.length - 4_000_000 <= 65536);
  }
});

test('grow fills the new entries, also across the move to the large reservation', () => {
  let a = growable(Uint32Array);
  const NONE = 0xffffffff;
  let written = 0;
  for (let n = 1000; n <= 200_000; n += 1000) {
    a = grow(a, n, NONE);
    for (let i = written; i < n; i++) assert.equal(a[i], NONE, `entry ${i} filled`);
    for (let i = written; i < n; i++) a[i] = i;
    written = n;
  }
  for (let i = 0; i < written; i++) assert.equal(a[i], i);
});

test('fixed arrays (not from growable) still grow by copying, by their factor', () => {
  const a = new Uint16Array(100).fill(7);
  const b = grow(a, 101, 9);
  assert.notEqual(b, a);
  assert.equal(b.length, 150);
  assert.equal(b[99], 7);
  assert.equal(b[100], 9);
  assert.equal(grow(b, 150), b, 'no growth when it already fits');
});

test('a column may not outgrow the 4 GiB limit of one buffer', () => {
  assert.throws(() => grow(growable(Uint32Array), 2 ** 30), RangeError);
});
