/**
 * The disk tier driven by real NBD clients (nbdcopy, qemu-img, libnbd through nbdsh): a RAM pool
 * of 16 MiB in front of a backing file of small (1 MiB) segments, and several times the pool
 * written through it, so writeback, loads from disk, promotion and segment cleaning all happen
 * under clients nobody here wrote. Every check compares bytes with what the client wrote.
 *
 *   data.img (80 MiB: zero, duplicate, half-random, random, text pages)
 *     -- nbdcopy --> zdedup serve --max-pool 16M --backing b.img --segment-size 1M
 *     <-- nbdcopy --  (byte-identical)      qemu-img compare data.img URI  (identical)
 *   overwrite 1/4 in random 64 KiB ranges (unaligned too: read-modify-write of cold pages)
 *     -> read back and compare again
 *
 * A test whose tool is missing is skipped with the tool's name, never passed.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { hasPythonNbd, hasTool, run, runOk, startServer, type Server } from './nbd/harness.js';
import { MiB, PAGE, Rng, TierData, generateTierFile, storeStats, tierIo, type StoreStats } from './nbd/tier-helpers.js';

const POOL = 16 * MiB;
const PAGES = 20480; // 80 MiB: 5x the pool
const SIZE = PAGES * PAGE;

function skipUnless(t: { skip(msg: string): void }, ...tools: string[]): boolean {
  for (const tool of tools) {
    const ok = tool === 'python3-libnbd' ? hasPythonNbd() : hasTool(tool);
    if (!ok) { t.skip(`${tool} not installed`); return true; }
  }
  return false;
}

/** Runs fn against a fresh server with a backing file in dir; the server must exit 0 on SIGTERM. */
async function withTierServer(dir: string, extra: string[], fn: (s: Server) => Promise<void>): Promise<void> {
  const s = await startServer(['--size', String(SIZE), '--max-pool', '16M', '--backing', join(dir, 'b.img'),
    '--segment-size', '1M', ...extra]);
  try {
    await fn(s);
  } finally {
    const r = await s.stop();
    assert.equal(r.code, 0, `server exit code after SIGTERM (signal ${r.signal})`);
  }
}

/** Runs fn in a fresh directory holding data.img (PAGES pages of generateTierFile(seed)); removes the directory after. */
async function withDataFile(prefix: string, seed: number, fn: (dir: string, data: string) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  try {
    const data = join(dir, 'data.img');
    generateTierFile(data, PAGES, seed);
    await fn(dir, data);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Samples /stats every 50 ms while fn runs; returns the largest pool_total_size seen. */
async function watchPool(s: Server, fn: () => Promise<void>): Promise<number> {
  let max = 0;
  let done = false;
  const sampler = (async () => {
    while (!done) {
      const st = await storeStats(s);
      max = Math.max(max, st['pool_total_size']!);
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  try {
    await fn();
  } finally {
    done = true;
    await sampler;
  }
  return max;
}

/** Reads the whole export back with nbdcopy and checks it equals `want` byte for byte. */
async function readBackEquals(s: Server, dir: string, want: string, what: string): Promise<void> {
  const out = join(dir, 'back.img');
  rmSync(out, { force: true });
  await runOk('nbdcopy', ['--connections=4', s.uri(), out]);
  const a = readFileSync(want);
  const b = readFileSync(out);
  assert.equal(b.length, a.length, `${what}: length`);
  if (!a.equals(b)) {
    let first = 0;
    while (first < a.length && a[first] === b[first]) first++;
    assert.fail(`${what}: read back differs from what was written, first at byte ${first} (page ${Math.floor(first / PAGE)})`);
  }
  rmSync(out, { force: true });
}

function logStats(t: { diagnostic(m: string): void }, what: string, st: StoreStats): void {
  const keys = ['stored_pages', 'unique_objects', 'compressed_bytes', 'pool_total_size', 'ram_objects', 'disk_objects',
    'written_back_pages', 'evicted_clean_pages', 'pool_bypass_pages', 'writethrough_pages', 'promoted_pages', 'disk_loads',
    'disk_segments', 'disk_bytes', 'disk_live_bytes', 'cleaned_segments', 'write_amplification', 'store_waits',
    'disk_read_errors', 'disk_write_errors', 'reject_reclaim_fail'];
  t.diagnostic(`${what}: ${keys.map((k) => `${k}=${st[k]}`).join(' ')}`);
}

/** Random 64 KiB ranges covering about a quarter of the export, some not page-aligned. */
function quarterRanges(seed: number): [number, number][] {
  const rng = new Rng(seed);
  const ranges: [number, number][] = [];
  const LEN = 64 * 1024;
  for (let i = 0; i < SIZE / 4 / LEN; i++) {
    let off = (rng.next() % (SIZE / PAGE - 16)) * PAGE;
    if (i % 4 === 0) off += 1 + (rng.next() % (PAGE - 1)); // partial pages at both ends
    ranges.push([off, LEN]);
  }
  return ranges;
}

/** Applies the ranges to a copy of `from` with new TierData(seed) content; returns the new file and the ranges file. */
function overwriteFile(dir: string, from: string, seed: number): { file: string; rangesFile: string } {
  const data = readFileSync(from);
  const ranges = quarterRanges(seed);
  const gen = new TierData(seed);
  const buf = Buffer.alloc(64 * 1024);
  let p = 0;
  for (const [off, len] of ranges) {
    gen.fill(buf, p);
    p += buf.length / PAGE;
    buf.copy(data, off, 0, len);
  }
  const file = join(dir, `data-${seed}.img`);
  writeFileSync(file, data);
  const rangesFile = join(dir, `ranges-${seed}.json`);
  writeFileSync(rangesFile, JSON.stringify(ranges));
  return { file, rangesFile };
}

describe('disk tier with real NBD clients', () => {
  test('nbdcopy 5x the pool in and out byte-identical, qemu-img compare, overwrite a quarter, compare again',
    { timeout: 5 * 60_000 }, async (t) => {
      if (skipUnless(t, 'nbdcopy', 'qemu-img', 'python3-libnbd')) return;
      await withDataFile('zdedup-tier-clients-', 1, async (dir, data) => withTierServer(dir, ['--backing-size', '512M'], async (s) => {
        const maxPool = await watchPool(s, async () => {
          await runOk('nbdcopy', ['--connections=4', '--flush', data, s.uri()]);
        });
        const afterWrite = await storeStats(s);
        logStats(t, 'after write', afterWrite);
        assert.equal(afterWrite['max_pool_bytes'], POOL);
        assert.ok(maxPool <= POOL, `pool_total_size reached ${maxPool} > max_pool_bytes ${POOL}`);
        assert.ok(afterWrite['compressed_bytes']! > 1.5 * POOL, `the data does not overflow the pool: compressed_bytes ${afterWrite['compressed_bytes']}`);
        assert.ok(afterWrite['written_back_pages']! > 0, 'objects were written back to the disk tier');
        assert.ok(afterWrite['disk_segments']! > 1, `several segments in use: ${afterWrite['disk_segments']}`);
        assert.ok(afterWrite['disk_objects']! > 0, 'objects live in the disk tier');
        // nbdcopy leaves runs of zeroes as holes (it skips or zeroes them), so count only the rest
        const nonZero = countNonZeroPages(data);
        assert.ok(afterWrite['stored_pages']! >= nonZero, `stored_pages ${afterWrite['stored_pages']} < ${nonZero} non-zero pages written`);

        // read back: nbdcopy and qemu-img compare, both through disk loads
        await readBackEquals(s, dir, data, 'nbdcopy read back');
        await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', data, s.uri()]);
        const afterRead = await storeStats(s);
        logStats(t, 'after read', afterRead);
        assert.ok(afterRead['disk_loads']! > 0, 'loads were served from the disk tier');

        // overwrite a quarter of it in 64 KiB ranges, some unaligned (read-modify-write of cold pages)
        const { file: data2, rangesFile } = overwriteFile(dir, data, 2);
        const maxPool2 = await watchPool(s, async () => {
          await tierIo(s, { MODE: 'ranges', SRC: data2, RANGES: rangesFile });
        });
        await readBackEquals(s, dir, data2, 'read back after the overwrite');
        await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', data2, s.uri()]);
        // the comparison can fail: the old contents differ from the server's
        const stale = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', data, s.uri()]);
        assert.equal(stale.code, 1, `qemu-img compare sees the overwrite: ${stale.stdout}${stale.stderr}`);

        const end = await storeStats(s);
        logStats(t, 'end', end);
        assert.ok(maxPool2 <= POOL && end['pool_total_size']! <= end['max_pool_bytes']!,
          `pool_total_size ${Math.max(maxPool2, end['pool_total_size']!)} > max_pool_bytes ${end['max_pool_bytes']}`);
        assert.ok(end['written_back_pages']! > 0 && end['disk_loads']! > 0 && end['disk_segments']! > 0);
        assert.ok(end['disk_live_bytes']! < end['disk_bytes']!,
          `overwritten objects left dead records on disk (live ${end['disk_live_bytes']} of ${end['disk_bytes']})`);
        for (const k of ['disk_read_errors', 'disk_write_errors', 'decompress_fail', 'reject_reclaim_fail']) {
          assert.equal(end[k], 0, `${k} stays 0 on a healthy disk`);
        }
        assert.ok(end['disk_live_bytes']! <= end['disk_bytes']!, 'live bytes within used bytes');
      }));
    });

  test('--writethrough: every new object goes to disk at store time, eviction drops clean copies, data round-trips',
    { timeout: 5 * 60_000 }, async (t) => {
      if (skipUnless(t, 'nbdcopy', 'qemu-img')) return;
      await withDataFile('zdedup-tier-wt-', 3, async (dir, data) => withTierServer(dir, ['--backing-size', '512M', '--writethrough'], async (s) => {
        const maxPool = await watchPool(s, async () => {
          await runOk('nbdcopy', ['--connections=4', '--flush', data, s.uri()]);
        });
        const st = await storeStats(s);
        logStats(t, 'after write', st);
        assert.ok(maxPool <= POOL, `pool_total_size reached ${maxPool} > ${POOL}`);
        assert.ok(st['writethrough_pages']! > 0, 'objects were written through at store time');
        assert.ok(st['evicted_clean_pages']! > 0, 'eviction dropped RAM copies the disk already held');
        await readBackEquals(s, dir, data, 'writethrough read back');
        await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', data, s.uri()]);
        const end = await storeStats(s);
        logStats(t, 'end', end);
        assert.ok(end['disk_loads']! > 0, 'loads were served from the disk tier');
        assert.equal(end['disk_read_errors'], 0);
        assert.equal(end['decompress_fail'], 0);
      }));
    });

  test('a small backing file: repeated overwrites make the cleaner reclaim segments, and every byte stays right',
    { timeout: 5 * 60_000 }, async (t) => {
      if (skipUnless(t, 'nbdcopy', 'qemu-img', 'python3-libnbd')) return;
      await withDataFile('zdedup-tier-clean-', 4, async (dir, first) => {
        let data = first;
        await withTierServer(dir, ['--backing-size', String(BACKING_SMALL)], async (s) => {
          await runOk('nbdcopy', ['--connections=4', '--flush', data, s.uri()]);
          logStats(t, 'after write', await storeStats(s));
          for (let round = 0; round < OVERWRITE_ROUNDS; round++) {
            const next = overwriteFile(dir, data, 10 + round);
            await tierIo(s, { MODE: 'ranges', SRC: next.file, RANGES: next.rangesFile });
            if (data !== first) rmSync(data);
            data = next.file;
            logStats(t, `after overwrite ${round + 1}`, await storeStats(s));
          }
          await readBackEquals(s, dir, data, 'read back after the overwrites');
          await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', data, s.uri()]);
          const end = await storeStats(s);
          logStats(t, 'end', end);
          assert.ok(end['cleaned_segments']! > 0, `the cleaner reclaimed segments (cleaned_segments ${end['cleaned_segments']})`);
          assert.ok(end['disk_segments']! <= end['backing_size']! / MiB, 'segments in use fit the backing');
          for (const k of ['disk_read_errors', 'disk_write_errors', 'decompress_fail', 'reject_reclaim_fail']) {
            assert.equal(end[k], 0, `${k} stays 0`);
          }
        });
      });
    });
});

/** 47 segments of 1 MiB: the data (~20 MiB on disk) plus four rounds of overwrites need the cleaner. */
const BACKING_SMALL = 48 * MiB;
const OVERWRITE_ROUNDS = 4;

function countNonZeroPages(path: string): number {
  const d = readFileSync(path);
  const zero = Buffer.alloc(PAGE);
  let n = 0;
  for (let p = 0; p * PAGE < d.length; p++) if (!d.subarray(p * PAGE, (p + 1) * PAGE).equals(zero)) n++;
  return n;
}
