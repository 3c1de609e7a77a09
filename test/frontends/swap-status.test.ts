/**
 * `zdedup swap status` shows the store's figures by the names /stats has: every name it looks up
 * exists in a real store's stats, and the rejection counters reach the entry (issue 8 item 7: it
 * looked up `reject_pool_limit`, which /stats never had, so pool-limit rejections were never shown).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { PageStore } from '../../src/core/page-store.js';
import { SHOWN_STATS, swapStatus } from '../../src/frontends/swap/status.js';

test('every figure swap status shows is a stat the store reports', () => {
  const stats = new PageStore({ pageSize: 4096, codec: 'lz4' }).stats() as unknown as Record<string, unknown>;
  for (const k of SHOWN_STATS) assert.equal(typeof stats[k], 'number', `/stats has no "${k}"`);
});

test('swap status shows the pool-limit rejections of the server it asks', async () => {
  const store = new PageStore({ pageSize: 4096, codec: 'lz4', maxPoolBytes: 64 * 1024 });
  const area = store.createArea('a', 64);
  let refused = 0;
  for (let p = 0; p < 64; p++) if (store.store(area, p, randomBytes(4096)) !== 'stored') refused++;
  assert.ok(refused > 0, 'the pool limit was hit');
  const srv = http.createServer((_req, res) => { res.setHeader('content-type', 'application/json'); res.end(JSON.stringify({ store: store.stats() })); });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const dir = mkdtempSync(join(tmpdir(), 'zdedup-swap-status-'));
  try {
    const [e] = await swapStatus(dir, String((srv.address() as AddressInfo).port));
    assert.equal(e?.stats_error, null);
    assert.equal(e?.stats?.['pool_limit_hit'], store.stats().pool_limit_hit);
    assert.ok(e!.stats!['pool_limit_hit']! >= refused);
    assert.equal(e?.stats?.['reject_reclaim_fail'], 0);
    assert.equal(e?.stats?.['reject_alloc_fail'], 0);
  } finally {
    srv.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
