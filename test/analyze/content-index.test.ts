/**
 * ContentIndex white-box tests: outcomes (new / within / cross), growth keeps every entry
 * reachable, and a full index stops remembering instead of growing past its budget.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ContentIndex, NEW, DUP_WITHIN, DUP_CROSS, FULL, BYTES_PER_CELL } from '../../src/analyze/content-index.js';
import { PairCounter, TopContents } from '../../src/analyze/tables.js';

function fp(i: number): [number, number, number, number] {
  // distinct keys whose low word collides often (stress linear probing)
  return [(i * 16) >>> 0, Math.imul(i, 0x9e3779b1) >>> 0, i >>> 0, 0xabcdef];
}

test('observe: first occurrence, then within-source and cross-source duplicates', () => {
  const ix = new ContentIndex(1 << 20);
  assert.equal(ix.observe(...fp(1), 0), NEW);
  assert.equal(ix.observe(...fp(1), 0), DUP_WITHIN);
  assert.equal(ix.count, 2);
  assert.equal(ix.observe(...fp(1), 1), DUP_CROSS);
  assert.equal(ix.firstSource, 0);
  assert.equal(ix.observe(...fp(1), 1), DUP_WITHIN);
  assert.equal(ix.observe(...fp(2), 1), NEW);
  assert.equal(ix.size, 2);
});

test('growth rehashes every entry reachable; counts survive', () => {
  const ix = new ContentIndex(64 << 20);
  const n = 200_000;
  for (let i = 0; i < n; i++) assert.equal(ix.observe(...fp(i), 0), NEW);
  ix.checkInvariants();
  assert.equal(ix.size, n);
  assert.ok(ix.capacity * 0.7 >= n);
  for (let i = 0; i < n; i += 997) {
    assert.equal(ix.observe(...fp(i), 0), DUP_WITHIN);
    assert.equal(ix.count, 2);
  }
});

test('a full index returns FULL and stays within its byte budget', () => {
  const budget = 1 << 20;
  const ix = new ContentIndex(budget);
  let full = 0;
  for (let i = 0; i < 100_000; i++) if (ix.observe(...fp(i), 0) === FULL) full++;
  assert.ok(ix.bytes() <= budget, `${ix.bytes()} <= ${budget}`);
  assert.equal(ix.bytes(), ix.capacity * BYTES_PER_CELL);
  assert.equal(ix.size, ix.maxContents);
  assert.equal(full, 100_000 - ix.maxContents);
  // remembered contents are still found
  assert.equal(ix.observe(...fp(0), 0), DUP_WITHIN);
  ix.checkInvariants();
});

test('pair counter and top contents keep exact counts', () => {
  const pc = new PairCounter();
  for (let b = 1; b < 300; b++) for (let k = 0; k < b % 7; k++) pc.add(0, b);
  pc.add(5, 6); pc.add(5, 6);
  const top = pc.top(3);
  assert.deepEqual(top[0], { a: 0, b: 6, pages: 6 });
  const tc = new TopContents(2);
  const page = new Uint8Array(4096); page[100] = 7;
  tc.bump(1, 1, 1, 1, 2, 0, page, 4096);
  tc.bump(2, 2, 2, 2, 2, 0, page, 4096);
  tc.bump(3, 3, 3, 3, 2, 0, page, 4096); // ties: not entered
  tc.bump(3, 3, 3, 3, 3, 0, page, 4096); // now larger: replaces a count-2 entry
  tc.bump(1, 1, 1, 1, 3, 0, page, 4096);
  const order = tc.order();
  assert.deepEqual(order.map((e) => tc.count[e]), [3, 3]);
  assert.equal(tc.previewOffset[0], 96);
});
