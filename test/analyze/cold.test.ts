/**
 * `zdedup analyze` projects the cold tier: the distinct pages lz4 shrinks, zstd-compressed N at a
 * time in scan order (exactly what a direct zstd of those groups gives), the others kept hot and
 * raw; --cold-codec off leaves it out.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseCodec } from '../../src/engine/codec/codec.js';
import { nativeZstd } from '../../src/engine/codec/native.js';
import { isSameFilled } from '../../src/engine/codec/same-filled.js';
import { COLD_OBJECT_METADATA_BYTES } from '../../src/core/cold.js';
import { OBJECT_METADATA_BYTES, SLOT_METADATA_BYTES } from '../../src/core/page-store.js';
import { fillRandom, makePage } from '../helpers/pages.js';
import { runAnalyze } from './fixtures.js';

const P = 4096;
const dir = mkdtempSync(join(tmpdir(), 'zdedup-analyze-cold-'));

function pages(): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < 45; i++) {
    out.push(makePage('text', i));                  // 45 distinct compressible
    if (i % 3 === 0) out.push(makePage('text', i)); // duplicates
    if (i % 4 === 0) out.push(Buffer.alloc(P));     // zero
    if (i % 5 === 0) { const r = Buffer.alloc(P); fillRandom(r, 900 + i); out.push(r); } // 9 random: kept hot
  }
  return out;
}

/** The projection computed directly: groups of `n` distinct lz4-compressible pages in scan order. */
function expected(all: Buffer[], level: number, n: number): { frames: number; grouped: number; hot: number; groups: number; distinct: number } {
  const lz4 = parseCodec('lz4');
  const z = nativeZstd();
  const dst = Buffer.alloc(2 * P);
  const out = Buffer.alloc(n * P * 2);
  const seen = new Set<string>();
  let group: Buffer[] = [];
  let frames = 0, grouped = 0, hot = 0, groups = 0;
  const flush = (): void => {
    if (group.length === 0) return;
    frames += z.compress(out, out.length, Buffer.concat(group), group.length * P, level);
    grouped += group.length; groups++; group = [];
  };
  for (const p of all) {
    if (isSameFilled(p, P)) continue;
    const k = p.toString('base64');
    if (seen.has(k)) continue;
    seen.add(k);
    if (lz4.compress(p, P, dst, P - P / 8) === 0) { hot++; continue; }
    group.push(p);
    if (group.length === n) flush();
  }
  flush();
  return { frames, grouped, hot, groups, distinct: seen.size };
}

test('analyze projects the cold tier exactly: zstd frames of N distinct compressible pages, the rest hot', () => {
  const all = pages();
  const path = join(dir, 'p.img');
  writeFileSync(path, Buffer.concat(all));
  for (const [level, n] of [[9, 8], [3, 4]] as const) {
    const { code, report } = runAnalyze(['--file', path, '--json', '--zstd-levels', '', '--cold-codec', `zstd:${level}`, '--cold-group', String(n)]);
    assert.equal(code, 0);
    const c = report!.totals.cold!;
    const e = expected(all, level, n);
    assert.deepEqual(report!.options.cold, { codec: `zstd:${level}`, group_pages: n, cold_object_metadata_bytes: COLD_OBJECT_METADATA_BYTES });
    assert.equal(c.grouped_pages, e.grouped);
    assert.equal(c.hot_pages, e.hot);
    assert.equal(c.hot_pages, 9);
    assert.equal(c.groups, e.groups);
    assert.equal(c.frame_bytes, e.frames);
    assert.equal(c.data_bytes, e.frames + e.hot * P);
    assert.equal(c.metadata_bytes, SLOT_METADATA_BYTES * all.length + OBJECT_METADATA_BYTES * e.distinct + COLD_OBJECT_METADATA_BYTES * e.grouped);
    assert.equal(c.total_bytes, c.data_bytes + c.allocator_bytes + c.metadata_bytes);
    assert.ok(c.total_bytes < report!.totals.projections['lz4']!.zdedup.total_bytes, 'the cold tier holds less than lz4 alone');
  }
});

test('--cold-codec off leaves the projection out; the table shows it when on; bad values exit 2', () => {
  const path = join(dir, 'q.img');
  writeFileSync(path, Buffer.concat(pages()));
  const off = runAnalyze(['--file', path, '--json', '--cold-codec', 'off']);
  assert.equal(off.code, 0);
  assert.equal(off.report!.totals.cold, undefined);
  assert.equal(off.report!.options.cold, null);
  const text = runAnalyze(['--file', path]);
  assert.match(text.stdout, /cold tier \(serve --codec lz4 --cold-codec zstd:9 --cold-group 8/);
  assert.equal(runAnalyze(['--file', path, '--cold-codec', 'lz4']).code, 2);
  assert.equal(runAnalyze(['--file', path, '--cold-group', '0']).code, 2);
});
