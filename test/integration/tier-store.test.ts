/**
 * The store's async paths over a real DiskTier on a temporary file (no fakes): regressions found
 * by the NBD tier tests (tier-clients), reduced to the few calls that trigger them.
 *
 * - A multi-page async store whose page i > 0 duplicates an object that lives only on disk must
 *   share it: the cold candidate is read and compared with page i, not with page 0.
 * - A page whose content has several tier-only candidates (one of them unreadable) must finish
 *   storing: every candidate is read at most a bounded number of times, never in a loop.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { PageStore } from '../../src/core/page-store.js';

const P = 4096;

function newStore(dir: string): PageStore {
  return new PageStore({
    maxPoolBytes: 1 << 20,
    background: false,
    backing: { path: join(dir, 'b.img'), size: 8 << 20, segmentSize: 64 * 1024 },
  });
}

/** Moves every RAM object to the tier and waits until its segment is on disk (not in a buffer). */
async function evictAllToDisk(s: PageStore): Promise<void> {
  const r = s.evictOldest(1 << 30);
  assert.equal(r, 'empty', 'every RAM object was written back');
  const tier = s.tier!;
  const written = tier.whenWritable();
  assert.equal(tier.sealOpen(), true, 'the open segment had records to seal');
  await written;
}

/**
 * Runs a store that may go async, failing (instead of hanging) when it issues more than
 * `maxReads` tier reads: a store that needs k candidate reads must not need unboundedly many.
 */
async function storeBounded(s: PageStore, area: ReturnType<PageStore['createArea']>, offset: number, pages: Buffer, maxReads: number): Promise<number> {
  const reads0 = s.tier!.stats().disk_reads;
  const r = s.startStoreBatch(area, offset, pages);
  if (typeof r === 'number') return r;
  let settled = false;
  const watch = new Promise<never>((_, reject) => {
    const check = (): void => {
      if (settled) return;
      const reads = s.tier!.stats().disk_reads - reads0;
      if (reads > maxReads) {
        reject(new Error(`store did not finish after ${reads} tier reads (bound ${maxReads}); verify_mismatch=${s.stats().verify_mismatch}: the store loops re-reading its candidates`));
        return;
      }
      setImmediate(check);
    };
    setImmediate(check);
  });
  try {
    return await Promise.race([r, watch]);
  } finally {
    settled = true;
  }
}

test('an async multi-page store shares a cold (disk-only) duplicate at page index > 0', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'zdedup-tier-store-'));
  const s = newStore(dir);
  try {
    const a = s.createArea('a', 64);
    const x = randomBytes(P), y = randomBytes(P), z = randomBytes(P);
    assert.equal(s.storeBatch(a, 0, Buffer.concat([x, y])), 2);
    await evictAllToDisk(s);
    assert.equal(s.locationForTest(a, 0), 'tier');
    const before = s.stats();
    // page 0 is new, page 1 duplicates x, which is only on disk: the store must read and compare it
    const n = await storeBounded(s, a, 2, Buffer.concat([z, x]), 50);
    assert.equal(n, 2);
    const after = s.stats();
    assert.equal(after.verify_mismatch - before.verify_mismatch, 0,
      'a true duplicate was judged different (the cold candidate was compared with the wrong page of the batch)');
    assert.equal(after.dedup_hits - before.dedup_hits, 1, 'x at page index 1 was shared with the cold object');
    assert.equal(after.unique_objects, 3, 'x, y, z: three objects, not four');
    const back = Buffer.alloc(4 * P);
    assert.equal(await s.loadBatchAsync(a, 0, 4, back), 4);
    assert.ok(back.equals(Buffer.concat([x, y, z, x])), 'pages read back');
    s.checkInvariants();
  } finally {
    await s.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a page with two cold candidates, one of them unreadable, is stored without looping over them', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'zdedup-tier-store-'));
  const s = newStore(dir);
  try {
    const a = s.createArea('a', 64);
    const x = randomBytes(P);
    // 1. x on disk, then its record rots
    assert.equal(s.store(a, 0, x), 'stored');
    await evictAllToDisk(s);
    s.corruptForTest(a, 0);
    // 2. x again: the rotten candidate cannot be read, so x is stored as a new object (same fingerprint)
    assert.equal(await storeBounded(s, a, 1, x, 50), 1);
    assert.equal(s.stats().unique_objects, 2, 'never shared with the unreadable object');
    await evictAllToDisk(s);
    assert.equal(s.locationForTest(a, 1), 'tier');
    // 3. x a third time: two cold candidates with x's fingerprint; the good one must be found
    const n = await storeBounded(s, a, 2, x, 50);
    assert.equal(n, 1);
    assert.equal(s.stats().unique_objects, 2, 'the third copy shares the readable object');
    const back = Buffer.alloc(P);
    assert.equal(await s.loadAsync(a, 2, back), 'hit');
    assert.ok(back.equals(x));
    await assert.rejects(s.loadAsync(a, 0, back), (e: unknown) => ['ERR_DISK_READ', 'ERR_DECOMPRESS'].includes((e as { code?: string }).code ?? ''),
      'the rotten record is an error, never data');
  } finally {
    await s.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
