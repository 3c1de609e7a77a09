/** `zdedup bench --file`: the stable JSON fields, a clean read-back, and bad input exit codes. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makePage, type Kind } from '../helpers/pages.js';

const BIN = fileURLToPath(new URL('../../../bin/zdedup.js', import.meta.url));

function zdedup(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('zdedup bench --file --json reports every stat, the codec-alone baseline, and reads back clean', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'zdedup-bench-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const kinds: Kind[] = ['zero', 'same', 'dup', 'text', 'random'];
  const pages = Array.from({ length: 500 }, (_, i) => makePage(kinds[i % 5]!, i));
  const file = join(dir, 'pages.img');
  writeFileSync(file, Buffer.concat(pages));
  for (const codec of ['lz4', 'zstd:1', 'none']) {
    const r = zdedup(['bench', '--file', file, '--codec', codec, '--json']);
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout) as Record<string, number | string>;
    for (const k of ['store_mbps', 'load_mbps', 'stored_pages', 'pool_total_size', 'stored_incompressible_pages', 'reject_alloc_fail',
      'decompress_fail', 'pool_limit_hit', 'written_back_pages', 'same_filled_pages', 'zero_pages', 'duplicate_pages', 'unique_objects',
      'logical_bytes', 'compressed_bytes', 'metadata_bytes', 'compression_ratio', 'dedup_ratio', 'effective_ratio',
      'codec_alone_bytes', 'codec_alone_mbps', 'codec_alone_distinct_bytes', 'overhead_ratio']) {
      assert.equal(typeof j[k], 'number', `${codec}: ${k}`);
    }
    assert.equal(j.mismatched_pages, 0);
    assert.equal(j.stored_pages, 500);
    assert.equal(j.same_filled_pages, 200); // zero + same
    assert.equal(j.zero_pages, 100);
    const sameFilled = (p: Buffer) => p.subarray(8).equals(p.subarray(0, p.length - 8));
    const distinct = new Set(pages.filter((p) => !sameFilled(p)).map((p) => p.toString('hex'))).size;
    assert.equal(j.unique_objects, distinct); // one object per distinct page that is not same-filled
    assert.equal(j.duplicate_pages, 300 - j.unique_objects);
    assert.equal(j.codec, codec);
  }
});

test('zdedup bench: bad input exits 2 with a stable code', () => {
  const r1 = zdedup(['bench', '--file', '/nonexistent/pages']);
  assert.equal(r1.status, 2);
  assert.match(r1.stderr, /^zdedup: ERR_IO: /);
  const r2 = zdedup(['bench', '--file', BIN, '--codec', 'gzip']);
  assert.equal(r2.status, 2);
  assert.match(r2.stderr, /ERR_BAD_CODEC/);
  const r3 = zdedup(['bench', '--file', BIN]);
  assert.equal(r3.status, 2);
  assert.match(r3.stderr, /ERR_PAGE_LENGTH/);
  const r4 = zdedup(['bench']);
  assert.equal(r4.status, 2);
});
