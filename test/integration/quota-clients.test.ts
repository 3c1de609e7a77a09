/**
 * Per-export pool quotas through a real server and real clients: a tenant that writes far past
 * its quota keeps its RAM share at the quota (its own cold objects go to the disk tier), while
 * another tenant's data stays in RAM and its writes never fail; everything reads back exactly.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hasTool, httpGet, runOk, startServer } from './nbd/harness.js';
import { MiB, PAGE, generateTierFile } from './nbd/tier-helpers.js';

interface ExportDoc { name: string; pool_bytes: number | null; max_pool_bytes: number }

test('export A filling its pool quota neither evicts nor fails export B', { timeout: 180_000 }, async (t) => {
  if (!hasTool('nbdcopy')) { t.skip('nbdcopy not installed (libnbd-bin)'); return; }
  const dir = mkdtempSync(join(tmpdir(), 'zdedup-quota-'));
  const s = await startServer([
    '--export', 'a:64M:max-pool=2M', '--export', 'b:16M', '--max-pool', '32M',
    '--backing', join(dir, 'b.img'), '--backing-size', '256M', '--segment-size', '1M',
  ]);
  try {
    const fa = join(dir, 'a.img'), fb = join(dir, 'b.img.data');
    generateTierFile(fa, (48 * MiB) / PAGE, 11);
    generateTierFile(fb, (8 * MiB) / PAGE, 12);
    await runOk('nbdcopy', [fb, s.uri('b')]);
    const before = (JSON.parse(await httpGet(s.http!, '/stats')) as { exports: ExportDoc[] }).exports.find((e) => e.name === 'b')!;
    await runOk('nbdcopy', [fa, s.uri('a')]); // 24x its quota
    const doc = JSON.parse(await httpGet(s.http!, '/stats')) as { store: Record<string, number>; exports: ExportDoc[]; nbd: { errors: Record<string, number> } };
    const ea = doc.exports.find((e) => e.name === 'a')!, eb = doc.exports.find((e) => e.name === 'b')!;
    t.diagnostic(`a: pool ${ea.pool_bytes} of quota ${ea.max_pool_bytes}; b: pool ${eb.pool_bytes} (before a wrote: ${before.pool_bytes}); quota_limit_hit ${doc.store.quota_limit_hit}`);
    assert.equal(ea.max_pool_bytes, 2 * MiB);
    assert.ok(ea.pool_bytes! <= 2 * MiB, 'a stays within its quota');
    assert.equal(eb.pool_bytes, before.pool_bytes, "b's RAM share is untouched by a");
    assert.ok(doc.store.quota_limit_hit > 0);
    assert.deepEqual(doc.nbd.errors, {}, 'no write failed');
    await runOk('nbdcopy', [fb, s.uri('b')]); // b can still write
    for (const [f, name] of [[fa, 'a'], [fb, 'b']] as const) {
      const out = join(dir, `${name}.out`);
      await runOk('nbdcopy', [s.uri(name), out]);
      const want = readFileSync(f);
      assert.ok(readFileSync(out).subarray(0, want.length).equals(want), `export ${name} reads back exactly`);
    }
    const metrics = await httpGet(s.http!, '/metrics');
    assert.match(metrics, /zdedup_export_pool_bytes\{export="a"\} \d+/);
    assert.match(metrics, /zdedup_export_max_pool_bytes\{export="a"\} 2097152/);
  } finally {
    await s.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
