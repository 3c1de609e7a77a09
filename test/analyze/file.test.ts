/**
 * `zdedup analyze --file` on page files with known content: exact counts, and compressed sizes
 * equal to compressing each page with the engine's codec directly (capacity 7/8 page, else the
 * page size); cross-file duplicates; other page sizes; swap headers; tails; errors per source.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseCodec } from '../../src/engine/codec/codec.js';
import { isSameFilled } from '../../src/engine/codec/same-filled.js';
import { allocatedBytesByLength } from '../../src/analyze/analyzer.js';
import { runAnalyze } from './fixtures.js';
import { SLOT_METADATA_BYTES, OBJECT_METADATA_BYTES } from '../../src/core/page-store.js';

const dir = mkdtempSync(join(tmpdir(), 'zdedup-analyze-file-'));

/** Known content: zero, one-word, K copies of M text-ish pages, R random pages, shuffled deterministically. */
function buildPages(P: number, o: { zero: number; word: number; distinct: number; copies: number; random: number }): Buffer[] {
  const pages: Buffer[] = [];
  for (let i = 0; i < o.zero; i++) pages.push(Buffer.alloc(P));
  for (let i = 0; i < o.word; i++) { const b = Buffer.alloc(P); for (let j = 0; j < P; j += 8) b.writeBigUInt64LE(0xfeedfacecafebeefn, j); pages.push(b); }
  const distinct: Buffer[] = [];
  for (let d = 0; d < o.distinct; d++) {
    const b = Buffer.alloc(P);
    b.write(`distinct page ${d} `.repeat(P / 16), 'latin1');
    randomBytes(P / 4).copy(b, 0);
    distinct.push(b);
  }
  for (let c = 0; c < o.copies; c++) for (const d of distinct) pages.push(d);
  for (let i = 0; i < o.random; i++) pages.push(randomBytes(P));
  // interleave: a fixed permutation keeps "first occurrence" well defined but not trivial
  const out: Buffer[] = [];
  const step = 7;
  for (let s = 0; s < step; s++) for (let i = s; i < pages.length; i += step) out.push(pages[i]!);
  return out;
}

function expectedSizes(pages: Buffer[], P: number, spec: string): { all: number; data: number; unique: number; incompressible: number; alloc: number } {
  const codec = parseCodec(spec);
  const dst = new Uint8Array(2 * P);
  const alloc = allocatedBytesByLength(P);
  const seen = new Set<string>();
  let all = 0, data = 0, unique = 0, incompressible = 0, al = 0;
  for (const p of pages) {
    let len = codec.compress(p, P, dst, P - P / 8);
    if (len === 0) len = P;
    all += len;
    if (isSameFilled(p, P)) continue;
    if (len === P) incompressible++;
    data += len;
    al += alloc[len]!;
    const key = p.toString('base64');
    if (!seen.has(key)) { seen.add(key); unique += len; }
  }
  return { all, data, unique, incompressible, alloc: al };
}

test('page file: exact counts and sizes equal to the codec compressing each page', () => {
  const P = 4096;
  const L = { zero: 50, word: 9, distinct: 30, copies: 4, random: 17 };
  const pages = buildPages(P, L);
  const path = join(dir, 'pages.img');
  writeFileSync(path, Buffer.concat(pages));
  const { code, report } = runAnalyze(['--file', path, '--json', '--zstd-levels', '1,3']);
  assert.equal(code, 0);
  assert.ok(report);
  const t = report.totals;
  assert.equal(t.pages, pages.length);
  assert.equal(t.zero_pages, L.zero);
  assert.equal(t.same_filled_pages, L.zero + L.word);
  assert.equal(t.duplicate_pages, L.distinct * (L.copies - 1));
  assert.equal(t.duplicate_pages_within_source, L.distinct * (L.copies - 1));
  assert.equal(t.duplicate_pages_cross_source, 0);
  assert.equal(t.unique_pages, L.distinct + L.random);
  assert.equal(t.distinct_contents, L.distinct + L.random);
  assert.deepEqual(report.options.codecs, ['lz4', 'zstd:1', 'zstd:3']);
  for (const spec of report.options.codecs) {
    const e = expectedSizes(pages, P, spec);
    const pr = t.projections[spec]!;
    assert.equal(t.compressed[spec]!.bytes, e.all, `${spec} all pages`);
    assert.equal(t.compressed[spec]!.incompressible_pages, e.incompressible, `${spec} incompressible`);
    assert.equal(pr.compression.data_bytes, e.all);
    assert.equal(pr.compression_same_filled.data_bytes, e.data);
    assert.equal(pr.compression_same_filled.data_bytes + pr.compression_same_filled.allocator_bytes, Math.round(e.alloc));
    assert.equal(pr.zdedup.data_bytes, e.unique);
    assert.equal(pr.zdedup.metadata_bytes, SLOT_METADATA_BYTES * pages.length + OBJECT_METADATA_BYTES * (L.distinct + L.random));
    assert.equal(pr.zdedup.total_bytes, pr.zdedup.data_bytes + pr.zdedup.allocator_bytes + pr.zdedup.metadata_bytes);
    assert.equal(pr.zdedup.saved_bytes, pages.length * P - pr.zdedup.total_bytes);
  }
  // the most repeated content is one of the distinct pages, seen `copies` times
  const top = report.top_duplicate_contents[0]!;
  assert.equal(top.count, L.copies);
  assert.match(top.preview_hex, /^[0-9a-f]{128}$/);
  assert.equal(report.top_same_filled_words[0]!.word, '0x0000000000000000');
  assert.equal(report.top_same_filled_words[0]!.pages, L.zero);
  assert.deepEqual(report.top_same_filled_words[1], { word: '0xfeedfacecafebeef', pages: L.word });
});

test('two files: duplicates across sources, the sharing pair, and per-source dedup domains', () => {
  const P = 4096;
  const shared = buildPages(P, { zero: 0, word: 0, distinct: 12, copies: 1, random: 0 });
  const a = join(dir, 'a.img'), b = join(dir, 'b.img');
  writeFileSync(a, Buffer.concat([...shared, randomBytes(3 * P)]));
  writeFileSync(b, Buffer.concat([randomBytes(2 * P), ...shared, ...shared]));
  const { report } = runAnalyze(['--file', a, '--file', b, '--json', '--zstd-levels', '']);
  assert.ok(report);
  const [sa, sb] = report.sources;
  assert.equal(sa!.unique_pages, 15);
  assert.equal(sb!.duplicate_pages_cross_source, 12);
  assert.equal(sb!.duplicate_pages_within_source, 12);
  assert.equal(sb!.unique_pages, 2);
  assert.equal(report.totals.duplicate_pages, 24);
  assert.deepEqual(report.top_sharing_pairs.map((p) => [p.a, p.b, p.pages]), [[0, 1, 12]]);
  const pr = report.totals.projections.lz4!;
  // per-source domains store the 12 shared pages twice
  const e = expectedSizes(shared, P, 'lz4');
  assert.equal(pr.zdedup_per_source!.data_bytes - pr.zdedup.data_bytes, e.unique);
});

test('page size 16384, swap header skipped, tail bytes counted', () => {
  const P = 16384;
  const pages = buildPages(P, { zero: 3, word: 2, distinct: 5, copies: 2, random: 1 });
  const header = Buffer.alloc(P);
  header.write('SWAPSPACE2', 4086, 'latin1');
  const path = join(dir, 'swap.img');
  writeFileSync(path, Buffer.concat([header, ...pages, Buffer.alloc(100, 1)]));
  const { report } = runAnalyze(['--file', path, '--page-size', '16K', '--json', '--zstd-levels', '']);
  assert.ok(report);
  const s = report.sources[0]!;
  assert.equal(s.kind, 'swap_image');
  assert.equal(s.skipped.header_pages, 1);
  assert.equal(s.skipped.tail_bytes, 100);
  assert.equal(s.pages, pages.length);
  assert.equal(s.zero_pages, 3);
  assert.equal(s.same_filled_pages, 5);
  assert.equal(s.duplicate_pages, 5);
  assert.equal(report.options.page_size, P);
  assert.equal(report.totals.compressed.lz4!.bytes, expectedSizes(pages, P, 'lz4').all);
});

test('a missing file is reported per source and the scan goes on; bad options exit 2', () => {
  const ok = join(dir, 'ok.img');
  writeFileSync(ok, Buffer.alloc(8192));
  const { code, report } = runAnalyze(['--file', join(dir, 'nope.img'), '--file', ok, '--json']);
  assert.equal(code, 0);
  assert.ok(report);
  assert.equal(report.sources[0]!.status, 'error');
  assert.equal(report.sources[0]!.error!.code, 'ENOENT');
  assert.equal(report.sources[1]!.zero_pages, 2);
  assert.equal(runAnalyze(['--file', join(dir, 'nope.img'), '--json']).code, 1);
  const bad = runAnalyze(['--file', ok, '--page-size', '3000']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /ERR_INVALID_ARGUMENT/);
  assert.equal(runAnalyze(['--file', ok, '--zstd-levels', '99']).code, 2);
  assert.equal(runAnalyze([]).code, 2);
});

test('the terminal table shows the totals the JSON has', () => {
  const path = join(dir, 'table.img');
  writeFileSync(path, Buffer.concat(buildPages(4096, { zero: 4, word: 0, distinct: 3, copies: 3, random: 2 })));
  const { stdout } = runAnalyze(['--file', path, '--zstd-levels', '3']);
  assert.match(stdout, /15 pages of 4 KiB/);
  assert.match(stdout, /compression only \(zswap\/zram-like\)/);
  assert.match(stdout, /zdedup: dedup \+ compression \+ same-filled/);
  assert.match(stdout, /Most repeated page contents/);
});
