/**
 * Cache exports with real clients: four exports over four copies of one generated disk image,
 * read with nbdcopy. The contents equal the files, the cache holds about one copy, the second to
 * fourth reads come from RAM (no file read, every page a cache hit), and writes land in the file
 * without changing what the other exports read. A fifth image of the same size but other content
 * is served from its own file.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO, hasPythonNbd, hasTool, httpGet, run, runOk, startServer, type Server } from './nbd/harness.js';
import { MiB, PAGE, generateTierFile, poll } from './nbd/tier-helpers.js';

interface CacheInfo { identity: string; file_reads: number; file_read_bytes: number; file_write_bytes: number; cache_hit_pages: number; cache_miss_pages: number; scan_bytes: number }
interface Doc { store: Record<string, number>; exports: { name: string; size: number; cache?: CacheInfo }[] }

async function stats(s: Server): Promise<Doc> {
  return JSON.parse(await httpGet(s.http!, '/stats')) as Doc;
}
const cacheOf = (d: Doc, name: string): CacheInfo => d.exports.find((e) => e.name === name)!.cache!;

test('4 cache exports of identical images: contents match, one cached copy, reads 2-4 from RAM, writes land in the file', { timeout: 240_000 }, async (t) => {
  if (!hasTool('nbdcopy')) { t.skip('nbdcopy not installed (libnbd-bin)'); return; }
  const dir = mkdtempSync(join(tmpdir(), 'zdedup-cache-'));
  const SIZE = 32 * MiB;
  const pages = SIZE / PAGE;
  const base = join(dir, 'base.img');
  generateTierFile(base, pages, 21); // zero, duplicate, half-random, random and text pages
  const imgs = ['a', 'b', 'c', 'd'].map((n) => join(dir, `${n}.img`));
  for (const f of imgs) copyFileSync(base, f);
  const other = join(dir, 'e.img');
  generateTierFile(other, pages, 22); // same size, other content
  const s = await startServer([
    ...['a', 'b', 'c', 'd'].flatMap((n, i) => ['--export', `${n}:cache=${imgs[i]}`]),
    '--export', `e:cache=${other}`, '--export', `ro:cache=${base}:ro`,
  ]);
  try {
    const original = readFileSync(base);
    // The identity scan runs in the background: wait until the images know their group.
    const ready = await poll(async () => {
      const d = await stats(s);
      return ['a', 'b', 'c', 'd', 'e'].every((n) => cacheOf(d, n).identity === 'shared') ? d : null;
    }, 600, 100);
    assert.ok(ready !== null, 'identity scans finished');
    assert.equal(ready.exports.find((e) => e.name === 'a')!.size, SIZE, 'the export has the file\'s size');

    const read = async (name: string): Promise<Buffer> => {
      const out = join(dir, `${name}.out`);
      await runOk('nbdcopy', [s.uri(name), out]);
      return readFileSync(out);
    };
    assert.ok((await read('a')).equals(original), 'export a reads its file');
    const afterFirst = await stats(s);
    const a1 = cacheOf(afterFirst, 'a');
    t.diagnostic(`after the first read: ${JSON.stringify(a1)}; pool ${afterFirst.store.pool_total_size}, objects ${afterFirst.store.ram_compressed_bytes} B`);
    assert.ok(a1.file_read_bytes >= SIZE, 'the first read came from the file');
    for (const name of ['b', 'c', 'd']) {
      assert.ok((await read(name)).equals(original), `export ${name} reads its file`);
    }
    const after = await stats(s);
    for (const name of ['b', 'c', 'd']) {
      const c = cacheOf(after, name);
      assert.equal(c.file_reads, 0, `export ${name}: no file read (served from RAM)`);
      assert.equal(c.cache_miss_pages, 0, `export ${name}: no cache miss`);
      assert.ok(c.cache_hit_pages > 0 && c.cache_hit_pages <= pages, `export ${name}: pages read were cache hits (zero extents may be skipped by the client)`);
    }
    assert.ok(after.store.ephemeral_hits >= 3 * pages, 'ephemeral hits counted in /stats');
    // The cache holds about one copy: the 2nd-4th reads added nothing.
    assert.ok(after.store.ram_compressed_bytes <= afterFirst.store.ram_compressed_bytes * 1.01, 'one cached copy');
    assert.ok(after.store.pool_total_size <= afterFirst.store.pool_total_size + MiB);
    assert.ok(after.store.ram_compressed_bytes < SIZE, 'compressed and deduplicated');

    // Block status: the pages the cache knows to be zero are reported as ZERO, and they are zero.
    if (hasTool('nbdinfo')) {
      const map = JSON.parse((await runOk('nbdinfo', ['--map', '--json', s.uri('b')])).stdout) as { offset: number; length: number; type: number }[];
      const zeroes = map.filter((x) => (x.type & 2) !== 0);
      assert.ok(zeroes.length > 0, 'zero pages are reported');
      for (const z of zeroes) assert.ok(original.subarray(z.offset, z.offset + z.length).every((b) => b === 0), `extent at ${z.offset} is really zero`);
      assert.equal(map.reduce((a, x) => a + x.length, 0), SIZE, 'extents cover the export');
    }

    // An image of the same size but other content is read from its own file, correctly.
    assert.ok((await read('e')).equals(readFileSync(other)), 'export e reads its own file');
    assert.ok(cacheOf(await stats(s), 'e').file_read_bytes >= SIZE);
    assert.ok((await read('ro')).equals(original), 'a read-only export of the same file');

    // Writes land in the file (writethrough), and only there.
    const fresh = join(dir, 'fresh.img');
    generateTierFile(fresh, pages, 23);
    await runOk('nbdcopy', [fresh, s.uri('c')]);
    const freshBytes = readFileSync(fresh);
    assert.ok(readFileSync(imgs[2]!).equals(freshBytes), 'the write landed in c\'s file');
    assert.ok((await read('c')).equals(freshBytes), 'export c reads what was written');
    assert.ok((await read('d')).equals(original), 'export d still reads the original');
    assert.ok(readFileSync(imgs[3]!).equals(original) && readFileSync(base).equals(original), 'the other files are untouched');
    const w = await run('nbdcopy', [fresh, s.uri('ro')]);
    assert.notEqual(w.code, 0, 'a read-only cache export refuses writes');

    if (hasPythonNbd()) {
      // Partial pages and unaligned writes, through libnbd.
      const py = join(dir, 'w.py');
      writeFileSync(py, [
        'import nbd, sys',
        'h = nbd.NBD(); h.connect_uri(sys.argv[1])',
        'h.pwrite(b"X" * 10000, 4096 * 10 + 100)',
        'h.pwrite(b"hello", 4096 * 200 + 7)',
        'assert h.pread(10000, 4096 * 10 + 100) == b"X" * 10000',
        'assert h.pread(5, 4096 * 200 + 7) == b"hello"',
        'h.flush(); h.shutdown()',
      ].join('\n'));
      await runOk('/usr/bin/python3', [py, s.uri('b')]);
      const want = Buffer.from(original);
      want.fill('X', 4096 * 10 + 100, 4096 * 10 + 100 + 10000);
      want.write('hello', 4096 * 200 + 7);
      assert.ok(readFileSync(imgs[1]!).equals(want), 'unaligned writes landed in b\'s file');
      assert.ok((await read('b')).equals(want), 'export b reads them back');
      assert.ok((await read('a')).equals(original), 'export a is not affected by b\'s writes');
    } else {
      t.diagnostic('python3-libnbd missing: unaligned writes not tested');
    }
    const metrics = await httpGet(s.http!, '/metrics');
    assert.match(metrics, /zdedup_export_cache_file_read_bytes_total\{export="a"\} [1-9]\d*/);
    assert.match(metrics, /zdedup_export_cache_file_reads_total\{export="d"\} 0/);
    assert.match(metrics, /zdedup_ephemeral_hits_total [1-9]\d*/);
    assert.match(metrics, /zdedup_ephemeral_pages [1-9]\d*/);
    const end = await stats(s);
    assert.ok(cacheOf(end, 'b').file_write_bytes > 0 || !hasPythonNbd());
    t.diagnostic(`end: ${JSON.stringify(end.store)}`);
  } finally {
    await s.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('cache export under concurrent overlapping reads and writes from 4 connections: the export always equals its file', { timeout: 180_000 }, async (t) => {
  if (!hasPythonNbd()) { t.skip('python3-libnbd not installed'); return; }
  const dir = mkdtempSync(join(tmpdir(), 'zdedup-cache-race-'));
  const img = join(dir, 'race.img');
  generateTierFile(img, 256, 31);
  const twin = join(dir, 'twin.img');
  copyFileSync(img, twin); // an identical image: the race runs on a member of a group
  const s = await startServer(['--export', `r:cache=${img}`, '--export', `t:cache=${twin}`]);
  try {
    await poll(async () => ((await stats(s)).exports.every((e) => e.cache!.identity === 'shared') ? true : null), 600, 100);
    await runOk('nbdcopy', [s.uri('t'), join(dir, 'warm.out')]); // the group's pages cached from the twin
    const script = join(REPO, 'test/integration/nbd/cache_race.py');
    const r = await run('/usr/bin/python3', [script, s.uri('r'), img, '7', '60']);
    assert.equal(r.code, 0, `race: ${r.stdout} ${r.stderr}`);
    assert.match(r.stdout, /OK/);
    const d = await stats(s);
    t.diagnostic(`r: ${JSON.stringify(cacheOf(d, 'r'))}`);
    assert.ok(cacheOf(d, 'r').cache_hit_pages > 0, 'the race was served partly from the cache');
    // the twin was never written: it still reads the original
    const out = join(dir, 't.out');
    await runOk('nbdcopy', [s.uri('t'), out]);
    assert.ok(readFileSync(out).equals(readFileSync(twin)), 'the identical image is unaffected');
  } finally {
    await s.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
