/**
 * Fault injection under a real `zdedup serve` with a disk tier, driven by real clients (libnbd
 * through nbdsh, nbdcopy). Three faults, each below the server, none faked in its code:
 *
 *  (a) rot: one byte of one record's payload flipped in the backing file, behind the server's back
 *      (it reads with O_DIRECT, so it sees the change): that page, and only that page, is EIO;
 *      every other page reads back right; disk_read_errors counts it; rewriting the page heals it.
 *  (b) full: the backing file is sparse on an 8 MiB tmpfs, far smaller than the 64 MiB it claims.
 *      Writing far more than fits ends in clean NBD errors (ENOSPC), never a crash; everything
 *      the server acknowledged reads back right; disk_write_errors / reject_reclaim_fail count it.
 *  (c) failing medium: the backing is an nbdkit memory disk behind the error filter, exposed as a
 *      file by nbdfuse; writes, then reads, are switched to EIO while the server runs: stores are
 *      refused or kept in RAM, reads are right or EIO (never wrong), and all is right once the
 *      medium recovers.
 *
 * (b) and (c) need root (mount, FUSE) and are skipped, saying why, elsewhere.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, fsyncSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import { Fingerprinter } from '../../src/engine/dedup/fingerprint.js';
import { isSameFilled } from '../../src/engine/codec/same-filled.js';
import { FILE_HEADER_SIZE, REC_HEADER_SIZE, SEG_HEADER_SIZE, checkSegHeader, readRecordHeader, recordSpan, type RecordView } from '../../src/tiers/disk/format.js';
import { hasPythonNbd, hasTool, run, runOk, startServer, type Server } from './nbd/harness.js';
import { MiB, PAGE, Rng, generateTierFile, nbdErrors, poll, storeStats, tierIo, type StoreStats } from './nbd/tier-helpers.js';

const SEG = 1 * MiB;

function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

function skipUnless(t: { skip(msg: string): void }, ...needs: string[]): boolean {
  for (const n of needs) {
    let ok: boolean;
    if (n === 'root') ok = isRoot();
    else if (n === '/dev/fuse') ok = existsSync('/dev/fuse');
    else if (n === 'python3-libnbd') ok = hasPythonNbd();
    else ok = hasTool(n);
    if (!ok) {
      t.skip(n === 'root' ? 'needs root (mount / FUSE)' : n === '/dev/fuse' ? 'no /dev/fuse' : `${n} not installed`);
      return true;
    }
  }
  return false;
}

function logStats(t: { diagnostic(m: string): void }, what: string, st: StoreStats): void {
  const keys = ['stored_pages', 'unique_objects', 'pool_total_size', 'ram_objects', 'disk_objects', 'written_back_pages',
    'pool_bypass_pages', 'disk_loads', 'disk_segments', 'disk_free_segments', 'disk_bytes_written', 'disk_read_errors',
    'disk_write_errors', 'reject_reclaim_fail', 'pool_limit_hit', 'decompress_fail'];
  t.diagnostic(`${what}: ${keys.map((k) => `${k}=${st[k]}`).join(' ')}`);
}

/** A file of random (incompressible, unique) pages. */
function randomFile(path: string, bytes: number, seed: number): void {
  const rng = new Rng(seed);
  const buf = Buffer.alloc(bytes);
  rng.fill(buf, 0, bytes);
  writeFileSync(path, buf);
}

function alive(s: Server): boolean {
  return s.proc.exitCode === null && s.proc.signalCode === null;
}

/** A record found by walking the sealed segments of a backing file. */
interface FoundRecord { seg: number; at: number; len: number; fpLo: number; fpHi: number }

/** Walks every segment with a valid header and returns its valid records. */
function walkBacking(path: string, segSize: number): FoundRecord[] {
  const fd = openSync(path, 'r');
  const out: FoundRecord[] = [];
  const b = Buffer.alloc(segSize);
  const rv: RecordView = { codec: 0, len: 0, id: 0, fpLo: 0, fpHi: 0 };
  try {
    for (let seg = 0; ; seg++) {
      const n = readSync(fd, b, 0, segSize, FILE_HEADER_SIZE + seg * segSize);
      if (n < SEG_HEADER_SIZE) break;
      const used = checkSegHeader(b, seg, segSize);
      if (used < 0) continue;
      for (let at = SEG_HEADER_SIZE; at < used; at += recordSpan(rv.len)) {
        if (!readRecordHeader(b, at, used, rv)) break;
        out.push({ seg, at, len: rv.len, fpLo: rv.fpLo, fpHi: rv.fpHi });
      }
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

/**
 * Mounts an 8 MiB tmpfs, starts a server whose 64 MiB sparse backing file lives there (4 MiB pool,
 * 1 MiB segments), and writes 48 MiB of incompressible pages in 256 KiB requests until 24 in a row
 * are refused. Checks the refusal is clean; returns null (skipped) when no tmpfs can be mounted.
 * Unmounts (after stopping the server) when the test ends.
 */
async function fillTmpfsBacking(t: TestContext): Promise<{ s: Server; src: string; acked: number[]; CHUNK: number; SIZE: number } | null> {
  const dir = mkdtempSync(join(tmpdir(), 'zdedup-tier-full-'));
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mnt], { encoding: 'utf8' });
  if (m.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    t.skip(`cannot mount a tmpfs: ${m.stderr.trim()}`);
    return null;
  }
  let s: Server | null = null;
  t.after(async () => {
    if (s !== null && alive(s)) await s.stop();
    const u = spawnSync('umount', [mnt], { encoding: 'utf8' });
    if (u.status !== 0) spawnSync('umount', ['-l', mnt]);
    rmSync(dir, { recursive: true, force: true });
  });
  const SIZE = 48 * MiB; // incompressible: 4 MiB of RAM + 8 MiB of tmpfs hold a quarter of it
  const src = join(dir, 'src.img');
  randomFile(src, SIZE, 6);
  s = await startServer(['--size', String(SIZE), '--max-pool', '4M', '--backing', join(mnt, 'b.img'),
    '--backing-size', '64M', '--segment-size', String(SEG)]);
  const CHUNK = 256 * 1024;
  const w = await tierIo(s, { MODE: 'write', SRC: src, CHUNK: String(CHUNK), STOP_AFTER: '24' });
  const st = await storeStats(s);
  logStats(t, 'after filling', st);
  t.diagnostic(`acknowledged ${w.acked!.length} chunks of ${CHUNK} B; errors ${JSON.stringify(Object.fromEntries(Object.entries(w.errors).map(([k, v]) => [k, v.length])))}`);
  const warned = s.logs.filter((l) => l.level === 'warn' || l.level === 'error');
  t.diagnostic(`server log (warn/error): ${JSON.stringify(warned.map((l) => l.msg))}`);
  assert.ok(alive(s), 'server still running after the filesystem filled up');
  assert.ok(Object.keys(w.errors).length > 0, 'writing 4x what fits failed at some point');
  assert.deepEqual(Object.keys(w.errors), ['ENOSPC'], 'the refused writes are ENOSPC');
  assert.ok(w.acked!.length * CHUNK >= 4 * MiB, 'at least the pool was filled before refusing');
  assert.ok(st['disk_write_errors']! > 0 || st['reject_reclaim_fail']! > 0, 'the refusal is counted');
  assert.ok(warned.length > 0 && warned.length < 20, `the episode is logged, once, not per request (${warned.length} lines)`);
  return { s, src, acked: w.acked!, CHUNK, SIZE };
}

describe('disk tier faults', () => {
  test('(a) a flipped byte in a record on disk: that page is EIO, every other page is right, rewriting heals it',
    { timeout: 3 * 60_000 }, async (t) => {
      if (skipUnless(t, 'python3-libnbd', 'nbdcopy')) return;
      const dir = mkdtempSync(join(tmpdir(), 'zdedup-tier-rot-'));
      const PAGES = 6144; // 24 MiB through a 4 MiB pool
      const data = join(dir, 'data.img');
      generateTierFile(data, PAGES, 5);
      const backing = join(dir, 'b.img');
      const s = await startServer(['--size', String(PAGES * PAGE), '--max-pool', '4M', '--backing', backing,
        '--backing-size', '64M', '--segment-size', String(SEG)]);
      try {
        await runOk('nbdcopy', ['--flush', data, s.uri()]);
        const st0 = await storeStats(s);
        logStats(t, 'after write', st0);
        assert.ok(st0['written_back_pages']! > 0, 'objects were written back');

        // Page fingerprints of what we wrote (the record header carries the page's XXH3-64).
        const bytes = readFileSync(data);
        const fp = new Fingerprinter();
        const pagesByFp = new Map<string, number[]>();
        for (let p = 0; p < PAGES; p++) {
          const page = bytes.subarray(p * PAGE, (p + 1) * PAGE);
          if (isSameFilled(page, PAGE)) continue;
          fp.hash(page, PAGE);
          const k = `${fp.lo}:${fp.hi}`;
          const l = pagesByFp.get(k);
          if (l) l.push(p); else pagesByFp.set(k, [p]);
        }
        // A sealed record of a page written once; nothing has read or overwritten anything yet, so
        // the record is that object's only copy (not in RAM, not moved by the cleaner).
        const records = walkBacking(backing, SEG);
        t.diagnostic(`${records.length} records in sealed segments of the backing file`);
        const seen = new Map<string, number>();
        for (const r of records) seen.set(`${r.fpLo}:${r.fpHi}`, (seen.get(`${r.fpLo}:${r.fpHi}`) ?? 0) + 1);
        const victim = records.find((r) => seen.get(`${r.fpLo}:${r.fpHi}`) === 1 && pagesByFp.get(`${r.fpLo}:${r.fpHi}`)?.length === 1 && r.len > 64);
        assert.ok(victim !== undefined, 'found a record of a page written once');
        const victimPage = pagesByFp.get(`${victim.fpLo}:${victim.fpHi}`)![0]!;
        const shared = records.find((r) => seen.get(`${r.fpLo}:${r.fpHi}`) === 1 && (pagesByFp.get(`${r.fpLo}:${r.fpHi}`)?.length ?? 0) >= 3);
        const sharedPages = shared ? pagesByFp.get(`${shared.fpLo}:${shared.fpHi}`)! : [];
        t.diagnostic(`victim: segment ${victim.seg} offset ${victim.at} (${victim.len} B) = page ${victimPage}; ` +
          `shared record: ${shared ? `segment ${shared.seg} offset ${shared.at} = pages ${sharedPages.join(',')}` : 'none'}`);

        // Flip one payload byte of each (the server opened the file O_DIRECT: it reads the medium).
        const fd = openSync(backing, 'r+');
        for (const r of shared ? [victim, shared] : [victim]) {
          const pos = FILE_HEADER_SIZE + r.seg * SEG + r.at + REC_HEADER_SIZE + (r.len >> 1);
          const one = Buffer.alloc(1);
          readSync(fd, one, 0, 1, pos);
          one[0] ^= 0x5a;
          writeSync(fd, one, 0, 1, pos);
        }
        fsyncSync(fd);
        closeSync(fd);

        const broken = new Set([victimPage, ...sharedPages]);
        for (let pass = 0; pass < 2; pass++) { // twice: an error is never cached as data
          const r = await tierIo(s, { MODE: 'read', EXPECT: data, CHUNK: String(PAGE) });
          assert.deepEqual(r.bad, [], `pages read back wrong (never allowed): ${r.bad!.slice(0, 20).join(',')}`);
          assert.deepEqual(Object.keys(r.errors), ['EIO'], `errors other than EIO: ${JSON.stringify(Object.keys(r.errors))}`);
          const eio = r.errors['EIO']!;
          assert.ok(eio.includes(victimPage), `the page of the damaged record is EIO (got ${eio.slice(0, 20).join(',')})`);
          assert.deepEqual(eio.filter((p) => !broken.has(p)), [], 'only pages of the damaged records are EIO');
          // The shared object may have come back into RAM (a dedup hit on a cold object promotes
          // it), then its damaged disk copy is not read: its pages are all EIO or all fine, as one.
          const sharedEio = sharedPages.filter((p) => eio.includes(p)).length;
          assert.ok(sharedEio === 0 || sharedEio === sharedPages.length, `the ${sharedPages.length} pages of one object answer alike (${sharedEio} EIO)`);
          t.diagnostic(`pass ${pass + 1}: ${eio.length} pages EIO (the victim${sharedEio > 0 ? ' and the shared object' : '; the shared object is served from RAM'})`);
          assert.equal(r.ok, PAGES - eio.length, 'every other page reads back right');
        }
        const st1 = await storeStats(s);
        logStats(t, 'after reading', st1);
        assert.ok(st1['disk_read_errors']! > 0, 'disk_read_errors counted the bad record');
        assert.ok((await nbdErrors(s))['EIO']! > 0, 'the server answered EIO');

        // nbdcopy of the whole export fails (it sees the EIO) instead of copying wrong bytes
        const copy = await run('nbdcopy', [s.uri(), join(dir, 'out.img')]);
        assert.notEqual(copy.code, 0, 'nbdcopy notices the unreadable page');

        // rewriting the damaged page stores a new object: it reads back right afterwards
        const fresh = Buffer.alloc(PAGE, 0);
        new Rng(99).fill(fresh, 0, PAGE);
        const healed = Buffer.from(bytes);
        fresh.copy(healed, victimPage * PAGE);
        const healedFile = join(dir, 'healed.img');
        writeFileSync(healedFile, healed);
        const ranges = join(dir, 'ranges.json');
        writeFileSync(ranges, JSON.stringify([[victimPage * PAGE, PAGE]]));
        await tierIo(s, { MODE: 'ranges', SRC: healedFile, RANGES: ranges });
        const r2 = await tierIo(s, { MODE: 'read', EXPECT: healedFile, CHUNK: String(PAGE), OFF: String(victimPage * PAGE), LEN: String(PAGE) });
        assert.equal(r2.ok, 1, `the rewritten page reads back right: ${JSON.stringify(r2.errors)} bad ${r2.bad}`);
        assert.ok(alive(s), 'server still running');
      } finally {
        const r = await s.stop();
        assert.equal(r.code, 0, `server exit after SIGTERM (signal ${r.signal})`);
        rmSync(dir, { recursive: true, force: true });
      }
    });

  test('(b) backing file on a tmpfs that fills up: clean ENOSPC, the server keeps serving what it acknowledged',
    { timeout: 3 * 60_000 }, async (t) => {
      if (skipUnless(t, 'root', 'python3-libnbd')) return;
      const f = await fillTmpfsBacking(t);
      if (f === null) return;
      const { s, src, CHUNK } = f;
      // Everything acknowledged reads back exactly; refused chunks are unspecified (not checked).
      const r = await tierIo(s, { MODE: 'read', EXPECT: src, CHUNK: String(CHUNK), LEN: String((f.acked.at(-1)! + 1) * CHUNK) });
      const acked = new Set(f.acked);
      const badAcked = r.bad!.filter((i) => acked.has(i));
      const errAcked = Object.values(r.errors).flat().filter((i) => acked.has(i));
      assert.deepEqual(badAcked, [], 'acknowledged chunks read back wrong');
      assert.deepEqual(errAcked, [], `acknowledged chunks unreadable: ${JSON.stringify(r.errors)}`);
      logStats(t, 'after reading back', await storeStats(s));
      assert.ok(alive(s), 'server still running');
    });

  test('(b2) the tmpfs backing filled up, then the client discards everything: writes that fit are taken again',
    { timeout: 3 * 60_000 }, async (t) => {
      if (skipUnless(t, 'root', 'python3-libnbd')) return;
      const f = await fillTmpfsBacking(t);
      if (f === null) return;
      const { s, src, CHUNK, SIZE } = f;
      // The segments already allocated on the tmpfs are free again once nothing refers to them, so
      // "refused until space is freed" is over: a write that fits (RAM + those segments) must be taken.
      const trim = await run('nbdsh', ['-u', s.uri(), '-c', `h.trim(${SIZE}, 0)`, '-c', 'h.flush()']);
      assert.equal(trim.code, 0, `trim: ${trim.stderr}`);
      const freed = await storeStats(s);
      logStats(t, 'after discarding everything', freed);
      assert.equal(freed['stored_pages'], 0, 'the discard released every page');
      const REFILL = 8 * MiB; // < 4 MiB pool + the ~7 MiB of segments the tmpfs already holds
      const again = await poll(async () => {
        const w2 = await tierIo(s, { MODE: 'write', SRC: src, CHUNK: String(CHUNK), LEN: String(REFILL), STOP_AFTER: '1' });
        return Object.keys(w2.errors).length === 0 ? w2 : null;
      }, 10, 500);
      logStats(t, 'after refilling', await storeStats(s));
      assert.ok(again !== null,
        'after the client freed every page, 8 MiB (less than the pool plus the space the backing already holds) is still refused: ' +
        'the tier stays "failing" because it keeps retrying its stranded segment at a file offset the full filesystem cannot allocate');
      const r2 = await tierIo(s, { MODE: 'read', EXPECT: src, CHUNK: String(CHUNK), LEN: String(REFILL) });
      assert.deepEqual([r2.bad, r2.errors], [[], {}], 'the refill reads back right');
    });

  test('(c) a backing medium that fails writes, then reads, with EIO: refused or kept in RAM, never wrong data, recovers',
    { timeout: 3 * 60_000 }, async (t) => {
      if (skipUnless(t, 'root', '/dev/fuse', 'nbdfuse', 'nbdkit', 'fusermount3', 'python3-libnbd')) return;
      const dir = mkdtempSync(join(tmpdir(), 'zdedup-tier-eio-'));
      const mnt = join(dir, 'mnt');
      mkdirSync(mnt);
      const werr = join(dir, 'pwrite-fails');
      const rerr = join(dir, 'pread-fails');
      const pidfile = join(dir, 'nbdfuse.pid');
      const fuse = spawn('nbdfuse', ['-P', pidfile, join(mnt, 'disk'), '--socket-activation',
        'nbdkit', 'memory', '64M', '--filter=error',
        'error-pwrite-rate=100%', `error-pwrite-file=${werr}`, 'error-pread-rate=100%', `error-pread-file=${rerr}`],
      { stdio: ['ignore', 'ignore', 'pipe'] });
      let fuseErr = '';
      fuse.stderr.setEncoding('utf8').on('data', (d: string) => { fuseErr += d; });
      let s: Server | null = null;
      t.after(async () => {
        rmSync(werr, { force: true });
        rmSync(rerr, { force: true });
        if (s !== null && alive(s)) await s.stop();
        spawnSync('fusermount3', ['-u', mnt]);
        await poll(() => (fuse.exitCode !== null || fuse.signalCode !== null ? true : null), 50, 100);
        if (fuse.exitCode === null && fuse.signalCode === null) { spawnSync('fusermount3', ['-uz', mnt]); fuse.kill(); }
        rmSync(dir, { recursive: true, force: true });
      });
      const up = await poll(() => (existsSync(pidfile) ? true : fuse.exitCode !== null ? false : null), 100, 100);
      assert.equal(up, true, `nbdfuse did not come up: ${fuseErr}`);
      const backing = join(mnt, 'disk');

      const SIZE = 32 * MiB;
      const src = join(dir, 'src.img');
      generateTierFile(src, SIZE / PAGE, 7);
      s = await startServer(['--size', String(SIZE), '--max-pool', '4M', '--backing', backing, '--segment-size', String(SEG)]);
      const CHUNK = 256 * 1024;
      const half = SIZE / 2;

      // 1. healthy: the first half goes through, a good part of it to disk
      const w1 = await tierIo(s, { MODE: 'write', SRC: src, CHUNK: String(CHUNK), LEN: String(half) });
      assert.deepEqual(w1.errors, {}, 'a healthy medium takes every write');
      const st1 = await poll(async () => { const x = await storeStats(s!); return x['disk_bytes_written']! > 0 ? x : null; }, 50, 100);
      assert.ok(st1 !== null, 'segments were written to the medium');
      logStats(t, 'healthy', st1);

      // 2. writes to the medium fail: new data is refused (ENOSPC or EIO) or kept in RAM
      writeFileSync(werr, '');
      const w2 = await tierIo(s, { MODE: 'write', SRC: src, CHUNK: String(CHUNK), OFF: String(half), LEN: String(half), STOP_AFTER: '16' });
      const st2 = await storeStats(s);
      logStats(t, 'writes failing', st2);
      t.diagnostic(`second half: acknowledged ${w2.acked!.length} chunks, errors ${JSON.stringify(Object.fromEntries(Object.entries(w2.errors).map(([k, v]) => [k, v.length])))}`);
      assert.ok(alive(s), 'server still running');
      assert.ok(st2['disk_write_errors']! > 0, 'failed segment writes are counted');
      for (const e of Object.keys(w2.errors)) assert.ok(e === 'ENOSPC' || e === 'EIO', `refused with ${e}`);
      const acked2 = new Set(w2.acked!.map((i) => i + half / CHUNK));

      // everything acknowledged so far reads back right (the medium still reads)
      const checkAcked = async (what: string, allowEio: boolean): Promise<{ eio: number; ok: number }> => {
        const r = await tierIo(s!, { MODE: 'read', EXPECT: src, CHUNK: String(PAGE) });
        const chunkOf = (page: number): number => Math.floor((page * PAGE) / CHUNK);
        const isAcked = (page: number): boolean => chunkOf(page) < half / CHUNK || acked2.has(chunkOf(page));
        const bad = r.bad!.filter(isAcked);
        assert.deepEqual(bad, [], `${what}: acknowledged pages read back WRONG: ${bad.slice(0, 10).join(',')}`);
        const errs = Object.entries(r.errors).flatMap(([k, v]) => v.filter(isAcked).map((p) => [k, p] as const));
        if (!allowEio) assert.deepEqual(errs, [], `${what}: acknowledged pages unreadable`);
        for (const [k] of errs) assert.equal(k, 'EIO', `${what}: read error ${k}`);
        return { eio: errs.length, ok: r.ok! };
      };
      await checkAcked('writes failing', false);

      // 3. reads fail too: pages in RAM still read right, pages on the medium are EIO, none wrong
      writeFileSync(rerr, '');
      const r3 = await checkAcked('reads failing', true);
      const st3 = await storeStats(s);
      logStats(t, 'reads failing', st3);
      t.diagnostic(`reads failing: ${r3.ok} pages right, ${r3.eio} EIO`);
      assert.ok(r3.eio > 0, 'pages only on the medium are EIO');
      assert.ok(r3.ok > 0, 'pages in RAM (and holes) are still served');
      assert.ok(st3['disk_read_errors']! > 0);
      assert.ok(alive(s), 'server still running');

      // 4. the medium recovers: every acknowledged page reads right, and new writes are taken again
      rmSync(rerr);
      rmSync(werr);
      await checkAcked('recovered', false);
      const again = await poll(async () => {
        const w = await tierIo(s!, { MODE: 'write', SRC: src, CHUNK: String(CHUNK), OFF: String(half), LEN: String(half), STOP_AFTER: '1' });
        return Object.keys(w.errors).length === 0 ? w : null;
      }, 30, 500);
      assert.ok(again !== null, 'after the medium recovered, the whole second half is written without errors');
      for (let i = 0; i < half / CHUNK; i++) acked2.add(i + half / CHUNK);
      await checkAcked('after rewriting', false);
      const st4 = await storeStats(s);
      logStats(t, 'recovered', st4);
      assert.ok(st4['written_back_pages']! > st1['written_back_pages']!, 'writeback resumed');
    });
});
