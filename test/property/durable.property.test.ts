/**
 * Property test of durable mode against a plain model, in-process: random stores (random, text,
 * duplicate, zero and same-filled pages), zero ranges, invalidations, flushes and checkpoints on a
 * store over tiny segments (32 KiB, a 1 MiB backing: the cleaner runs, checkpoints free old journal
 * records), then a "crash": the backing is copied at a random moment while writes may be in flight,
 * and a new store recovers from the copy. Every page must hold its version at the last flush or a
 * later one (never an older one, never other bytes, never EIO); the recovered store's white-box
 * invariants hold, and recovering a second time (from the recovered store's own log) gives the same.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { PageStore } from '../../src/core/page-store.js';
import { makePage, type Kind } from '../helpers/pages.js';

const PAGES = 48;
const KINDS_D: Kind[] = ['random', 'random', 'text', 'dup', 'zero', 'same'];

type Op =
  | { t: 'store'; off: number; n: number; kind: number; v: number }
  | { t: 'zero'; off: number; n: number }
  | { t: 'inv'; off: number; n: number }
  | { t: 'flush' }
  | { t: 'ckpt' };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 10, arbitrary: fc.record({ t: fc.constant('store' as const), off: fc.nat(PAGES - 1), n: fc.integer({ min: 1, max: 6 }), kind: fc.nat(KINDS_D.length - 1), v: fc.nat(40) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('zero' as const), off: fc.nat(PAGES - 1), n: fc.integer({ min: 1, max: 8 }) }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('inv' as const), off: fc.nat(PAGES - 1), n: fc.integer({ min: 1, max: 8 }) }) },
  { weight: 3, arbitrary: fc.constant({ t: 'flush' as const }) },
  { weight: 1, arbitrary: fc.constant({ t: 'ckpt' as const }) },
);

const HOLE = Buffer.alloc(0);

test('durable mode: after a crash at any moment every page holds its flushed version or a later one', { timeout: 300_000 }, async () => {
  await fc.assert(fc.asyncProperty(fc.array(opArb, { minLength: 10, maxLength: 120 }), fc.nat(1000), async (ops, crashAt) => {
    const dir = mkdtempSync(join(tmpdir(), 'zdedup-durprop-'));
    try {
      const path = join(dir, 'b.img');
      const s = new PageStore({
        backing: { path, size: (1 << 20) + 4096, segmentSize: 32 << 10 }, persist: { checkpointBytes: 4096 },
        maxPoolBytes: 64 << 10, arenaBytes: 64 << 10, background: true,
      });
      const a = s.createArea('p', PAGES);
      const versions: Buffer[][] = Array.from({ length: PAGES }, () => [HOLE]);
      const durable = new Array<number>(PAGES).fill(0);
      const crashOp = crashAt % (ops.length + 1);
      const copy = join(dir, 'crash.img');
      let crashed = false;
      for (let i = 0; i < ops.length && !crashed; i++) {
        if (i === crashOp) { copyFileSync(path, copy); crashed = true; break; }
        const op = ops[i]!;
        const n = op.t === 'flush' || op.t === 'ckpt' ? 0 : Math.min(op.n, PAGES - op.off);
        if (op.t === 'store') {
          const buf = Buffer.concat(Array.from({ length: n }, (_, k) => makePage(KINDS_D[op.kind]!, op.v + k)));
          const stored = await s.storeBatchAsync(a, op.off, buf);
          for (let k = 0; k < stored; k++) versions[op.off + k]!.push(buf.subarray(k * 4096, (k + 1) * 4096));
        } else if (op.t === 'zero') {
          s.storeZeroRange(a, op.off, n);
          for (let k = 0; k < n; k++) versions[op.off + k]!.push(Buffer.alloc(4096));
        } else if (op.t === 'inv') {
          s.invalidateRange(a, op.off, n);
          for (let k = 0; k < n; k++) versions[op.off + k]!.push(HOLE);
        } else if (op.t === 'flush') {
          await s.sync();
          for (let p = 0; p < PAGES; p++) durable[p] = versions[p]!.length - 1;
        } else {
          s.checkpointNow();
        }
      }
      if (!crashed) copyFileSync(path, copy); // writes of the last ops may still be in flight: a crash then
      s.setBackground(false);
      const r = new PageStore({ backing: { path: copy, segmentSize: 32 << 10 }, persist: true, background: false });
      const ra = r.area('p');
      const into = Buffer.alloc(4096);
      const seen: Buffer[] = [];
      for (let p = 0; p < PAGES; p++) {
        const got = await r.loadAsync(ra, p, into);
        const content = got === 'miss' ? HOLE : Buffer.from(into);
        seen.push(content);
        const allowed = versions[p]!.slice(durable[p]!);
        assert.ok(allowed.some((v) => v.equals(content) || (v.length === 0 && content.length === 4096 && content.every((x) => x === 0))),
          `page ${p}: none of the ${allowed.length} versions allowed since its last flush (of ${versions[p]!.length})`);
      }
      r.checkInvariants();
      assert.equal(r.stats().recovery_lost_pages, 0);
      await r.close(); // a clean stop: everything recovered is on the medium again
      const r2 = new PageStore({ backing: { path: copy, segmentSize: 32 << 10 }, persist: true, background: false });
      for (let p = 0; p < PAGES; p++) {
        const got = await r2.loadAsync(r2.area('p'), p, into);
        assert.ok((got === 'miss' ? HOLE : into).equals(seen[p]!), `page ${p} differs after a second recovery`);
      }
      r2.checkInvariants();
      await r2.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }), { numRuns: 40 });
});
