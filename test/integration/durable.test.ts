/**
 * Durable mode (serve --persist, PageStore persist): what a FLUSH or FUA promised survives kill -9,
 * a torn tail and a restart; bit rot makes only the pages that need the rotted record EIO and is
 * reported (recovery, fsck); exports keep their size; qemu-img sees its image again after a crash.
 *
 *   crash    test/integration/nbd/durable_crash.py: 2 libnbd connections, random writes
 *            512 B..1 MiB (unaligned, overlapping, some FUA), trims, zeroes, flushes; kill -9 at a
 *            random moment, >= 50 rounds; every page is its durable version or a later one
 *   torn     the backing cut at random byte offsets: everything flushed before the cut is intact,
 *            the rest is old or new, never garbage, never EIO
 *   bit rot  a byte flipped in an old object record (payload, or header): exactly the pages that
 *            share it read as EIO, fsck exits 1 and names the record; a rotted journal record
 *            header makes a restart refuse (ERR_CORRUPT) until fsck --repair accepts the loss
 *   qemu     qemu-img convert into a durable export, kill -9, restart, qemu-img compare: identical
 *   config   another page size or a smaller --size: exit 2 with one line; a larger one grows
 *
 * Needs /usr/bin/python3 with python3-libnbd (crash) and qemu-img (qemu): skipped by name when missing.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, openSync, closeSync, readSync, writeSync, rmSync, truncateSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { PageStore, type AreaId } from '../../src/core/page-store.js';
import { DiskTier } from '../../src/tiers/disk/disk-tier.js';
import { FILE_HEADER_SIZE, REC_HEADER_SIZE } from '../../src/tiers/disk/format.js';
import { scanBacking } from '../../src/tiers/disk/recovery.js';
import { durableHeaderOf } from '../../src/tiers/disk/disk-tier.js';
import { Fingerprinter, xxh3Fingerprint } from '../../src/engine/dedup/fingerprint.js';
import { REPO, ZDEDUP, hasPythonNbd, hasTool, run, runOk, startServer } from './nbd/harness.js';
import { MiB, PAGE, Rng, generateTierFile } from './nbd/tier-helpers.js';

function tmp(prefix: string): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** A page of mixed content (compressible half, unique stamp) for version v of page p. */
function pageOf(p: number, v: number, rng: Rng): Buffer {
  const b = Buffer.alloc(PAGE);
  rng.fill(b, 0, PAGE / 2);
  b.writeUInt32LE(p, PAGE - 8);
  b.writeUInt32LE(v, PAGE - 4);
  return b;
}

function openDurable(path: string, extra: { size?: number; acceptLoss?: boolean } = {}): PageStore {
  return new PageStore({
    backing: { path, size: extra.size, segmentSize: 64 << 10 }, persist: { acceptLoss: extra.acceptLoss }, background: false,
  });
}

describe('durable mode: crash test (kill -9, two connections)', () => {
  test('every write acknowledged by FLUSH or FUA survives >= 50 kill -9 rounds; unflushed pages hold a version written, never garbage', { timeout: 900_000 }, async (t) => {
    if (!hasPythonNbd()) { t.skip('python3-libnbd not installed'); return; }
    const dir = tmp('zdedup-crash-');
    try {
      const rounds = Number(process.env.ZDEDUP_CRASH_ROUNDS ?? 50);
      const r = await run('/usr/bin/python3', [join(REPO, 'test/integration/nbd/durable_crash.py')], {
        env: { ZDEDUP, NODE: process.execPath, DIR: dir, ROUNDS: String(rounds), SEED: String(Date.now() % 100000) },
      });
      const last = r.stdout.trim().split('\n').pop() ?? '';
      assert.equal(r.code, 0, `crash driver failed: ${last}\n${r.stderr.slice(-3000)}`);
      const totals = JSON.parse(last) as Record<string, number>;
      assert.ok(totals.rounds! >= rounds, `rounds ${totals.rounds}`);
      assert.ok(totals.flushes! > rounds, 'flushes were acknowledged');
      assert.ok(totals.fua_writes! > 0 && totals.trims! > 0 && totals.zeroes! > 0, JSON.stringify(totals));
      assert.ok(totals.durable_pages_checked! > 0, 'pages whose only allowed version was the flushed one were checked');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('durable mode: torn tail', () => {
  test('a backing cut at random byte offsets recovers: flushed before the cut is intact, later pages old or new, never EIO', async () => {
    const dir = tmp('zdedup-torn-');
    try {
      const path = join(dir, 'b.img');
      const s = openDurable(path, { size: 4 * MiB + FILE_HEADER_SIZE });
      const a = s.createArea('t', 256);
      const rng = new Rng(42);
      // versions[p]: [batch, content] in order; ends[b]: backing offset the flush of batch b made durable
      const versions: [number, Buffer][][] = Array.from({ length: 256 }, () => []);
      const ends: number[] = [];
      for (let b = 0; b < 24; b++) {
        for (let k = 0; k < 12; k++) {
          const p = rng.next() % 256;
          const page = pageOf(p, b, rng);
          assert.equal(await s.storeAsync(a, p, page), 'stored');
          versions[p]!.push([b, page]);
        }
        if (b % 5 === 4) { s.invalidatePage(a, b); versions[b]!.push([b, Buffer.alloc(0)]); }
        await s.sync();
        ends.push((s.tier as DiskTier).durableEndForTest());
      }
      // The "crash": the store is abandoned without close (nothing more is written).
      const size = statSync(path).size;
      const lastEnd = Math.max(...ends);
      let discarded = 0;
      const cutRng = new Rng(7);
      for (let i = 0; i < 16; i++) {
        const cut = FILE_HEADER_SIZE + (cutRng.next() % (lastEnd - FILE_HEADER_SIZE + 1));
        const copy = join(dir, 'cut.img');
        copyFileSync(path, copy);
        truncateSync(copy, cut);
        const r = openDurable(copy);
        const ra = r.area('t');
        const into = Buffer.alloc(PAGE);
        for (let p = 0; p < 256; p++) {
          const vs = versions[p]!;
          let base = -1;
          for (let v = 0; v < vs.length; v++) if (ends[vs[v]![0]]! <= cut) base = v;
          const allowed = vs.slice(Math.max(0, base)).map((x) => x[1]);
          if (base < 0) allowed.unshift(Buffer.alloc(0)); // never flushed: a hole is allowed too
          const got = await r.loadAsync(ra as AreaId, p, into);
          const content = got === 'miss' ? Buffer.alloc(0) : Buffer.from(into);
          assert.ok(allowed.some((x) => x.equals(content)), `cut at ${cut}: page ${p} holds none of the allowed versions (${allowed.length})`);
        }
        discarded += r.stats().recovery_discarded_bytes;
        assert.equal(r.stats().recovery_lost_pages, 0);
        r.setBackground(false);
        rmSync(copy);
      }
      assert.ok(size >= lastEnd);
      assert.ok(discarded > 0, 'some cut fell inside a record: its bytes are reported as discarded');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('durable mode: bit rot', () => {
  /** Writes 64 contents into 256 slots (each shared by 4), flushes, checkpoints, closes. Returns the contents. */
  async function fill(path: string): Promise<Buffer[]> {
    const s = openDurable(path, { size: 4 * MiB + FILE_HEADER_SIZE });
    const a = s.createArea('r', 256);
    const rng = new Rng(9);
    const contents = Array.from({ length: 64 }, (_, i) => pageOf(i, 0, rng));
    for (let p = 0; p < 256; p++) assert.equal(await s.storeAsync(a, p, contents[p % 64]!), 'stored');
    await s.sync();
    s.checkpointNow();
    await s.close();
    return contents;
  }

  /** Flips one byte at `pos` of the file. */
  function flip(path: string, pos: number): void {
    const fd = openSync(path, 'r+');
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, pos);
    b[0] = b[0]! ^ 0x5a;
    writeSync(fd, b, 0, 1, pos);
    closeSync(fd);
  }

  /** Where the record of the object holding `content` is in the file. */
  function recordOf(path: string, content: Buffer): number {
    const h = durableHeaderOf(path)!;
    const fd = openSync(path, 'r');
    const scan = scanBacking(fd, h);
    closeSync(fd);
    const f = new Fingerprinter(xxh3Fingerprint());
    f.hash(content, PAGE);
    for (let i = 0; i < scan.objSerial.length; i++) {
      if (scan.objFpLo[i] === f.lo && scan.objFpHi[i] === f.hi) return FILE_HEADER_SIZE + scan.objSeg[i]! * h.segmentSize + scan.objOff[i]!;
    }
    throw new Error('record not found');
  }

  for (const where of ['payload', 'header'] as const) {
    test(`a byte flipped in an old object record's ${where}: only the 4 pages sharing it read EIO; fsck reports it`, async () => {
      const dir = tmp('zdedup-rot-');
      try {
        const path = join(dir, 'b.img');
        const contents = await fill(path);
        const victim = 17;
        flip(path, recordOf(path, contents[victim]!) + (where === 'payload' ? REC_HEADER_SIZE + 100 : 6));
        const s = openDurable(path);
        const a = s.area('r');
        // (recovery itself may not read that segment: the checkpoint covers it; reads and fsck check it)
        assert.ok([0, 4].includes(s.stats().recovery_lost_pages));
        const into = Buffer.alloc(PAGE);
        for (let p = 0; p < 256; p++) {
          if (p % 64 === victim) {
            await assert.rejects(s.loadAsync(a, p, into), (e: { code?: string }) => e.code === 'ERR_DISK_READ', `page ${p}`);
          } else {
            assert.equal(await s.loadAsync(a, p, into), 'hit');
            assert.ok(into.equals(contents[p % 64]!), `page ${p} intact`);
          }
        }
        await s.close();
        const r = await run(process.execPath, [ZDEDUP, 'fsck', '--backing', path, '--json']);
        assert.equal(r.code, 1, r.stdout + r.stderr);
        const rep = JSON.parse(r.stdout) as { damaged: { why: string }[]; lost_pages: number };
        assert.equal(rep.lost_pages, 4);
        assert.ok(rep.damaged.length > 0, 'the damaged record is listed');
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }

  test('a clean backing passes fsck (exit 0)', async () => {
    const dir = tmp('zdedup-rot-');
    try {
      const path = join(dir, 'b.img');
      await fill(path);
      const r = await run(process.execPath, [ZDEDUP, 'fsck', '--backing', path]);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /clean/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a rotted journal record header: restart refuses with ERR_CORRUPT; fsck --repair accepts the loss, then it starts', async () => {
    const dir = tmp('zdedup-rot-');
    try {
      const path = join(dir, 'b.img');
      const s = openDurable(path, { size: 4 * MiB + FILE_HEADER_SIZE });
      const a = s.createArea('r', 64);
      const rng = new Rng(3);
      for (let round = 0; round < 3; round++) {
        for (let p = 0; p < 64; p++) await s.storeAsync(a, p, pageOf(p, round, rng));
        await s.sync(); // one journal record per round, none covered by a checkpoint
      }
      s.setBackground(false); // a crash: no clean stop (that would write a checkpoint covering them)
      const h = durableHeaderOf(path)!;
      const fd = openSync(path, 'r');
      const scan = scanBacking(fd, h);
      closeSync(fd);
      const j = scan.meta.filter((m) => m.kind === 16).sort((x, y) => x.seq - y.seq)[0]!;
      // Find the journal record's offset: walk its segment for the record with that sequence.
      const seg = Buffer.alloc(h.segmentSize);
      const fd2 = openSync(path, 'r');
      readSync(fd2, seg, 0, h.segmentSize, FILE_HEADER_SIZE + j.seg * h.segmentSize);
      closeSync(fd2);
      let off = -1;
      for (let at = 64; at < h.segmentSize - 32; at += 8) {
        if (seg.readUInt16LE(at) === 0x5a52 && seg[at + 2] === 16 && seg.readUInt32LE(at + 8) === j.seq && seg.readUInt32LE(at + 4) === j.payload.length) { off = at; break; }
      }
      assert.ok(off > 0);
      flip(path, FILE_HEADER_SIZE + j.seg * h.segmentSize + off + 9); // the sequence number: header CRC fails
      assert.throws(() => openDurable(path), (e: { code?: string }) => e.code === 'ERR_CORRUPT');
      const bad = await run(process.execPath, [ZDEDUP, 'fsck', '--backing', path]);
      assert.equal(bad.code, 1, bad.stdout);
      assert.match(bad.stdout, /refuse to start/);
      const fixed = await run(process.execPath, [ZDEDUP, 'fsck', '--backing', path, '--repair', '--json']);
      assert.equal(JSON.parse(fixed.stdout).repaired, true, fixed.stdout + fixed.stderr);
      const r = openDurable(path); // starts now
      assert.equal(r.stats().recovered_pages, 64);
      await r.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('durable mode: group commit', () => {
  test('concurrent flushes share fdatasyncs; a flush with nothing new costs none', async () => {
    const dir = tmp('zdedup-gc-');
    try {
      const s = openDurable(join(dir, 'b.img'), { size: 4 * MiB + FILE_HEADER_SIZE });
      const a = s.createArea('g', 64);
      const rng = new Rng(5);
      for (let p = 0; p < 32; p++) await s.storeAsync(a, p, pageOf(p, 0, rng));
      const before = s.stats().disk_syncs;
      await Promise.all(Array.from({ length: 16 }, () => s.sync()));
      const used = s.stats().disk_syncs - before;
      assert.ok(used >= 1 && used <= 2, `16 concurrent flushes used ${used} fdatasyncs`);
      await s.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('durable mode: serve', () => {
  test('qemu-img convert into a durable export, kill -9, restart: qemu-img compare says identical', { timeout: 120_000 }, async (t) => {
    if (!hasTool('qemu-img')) { t.skip('qemu-img not installed'); return; }
    const dir = tmp('zdedup-qemu-');
    try {
      const data = join(dir, 'data.img');
      generateTierFile(data, 4096, 11); // 16 MiB
      const args = ['--size', String(16 * MiB), '--backing', join(dir, 'b.img'), '--backing-size', '64M', '--segment-size', '1M', '--persist', '--max-pool', '4M'];
      const s1 = await startServer(args, { socket: join(dir, 'a.sock') });
      await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', data, s1.uri()]);
      s1.proc.kill('SIGKILL');
      await s1.exited;
      const s2 = await startServer(args, { socket: join(dir, 'a.sock') });
      try {
        const rec = s2.logs.find((l) => l.msg === 'recovered the store from the backing');
        assert.ok(rec !== undefined && (rec.recovered_pages as number) > 0, 'recovery is logged with its figures');
        const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', data, s2.uri()]);
        assert.equal(cmp.code, 0, cmp.stdout + cmp.stderr);
        assert.match(cmp.stdout, /identical/);
        const st = JSON.parse(await (await fetch(`http://${s2.http}/stats`)).text()) as Record<string, Record<string, number>>;
        const store = (st.store ?? st) as Record<string, number>;
        assert.ok(store.recovered_pages! > 0 && store.recovery_seconds! >= 0 && store.recovery_discarded_bytes! >= 0);
      } finally {
        await s2.stop();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('another --page-size or a smaller --size than the backing holds: exit 2, one line; a larger --size grows the export', { timeout: 60_000 }, async () => {
    const dir = tmp('zdedup-cfg-');
    try {
      const base = ['--backing', join(dir, 'b.img'), '--backing-size', '16M', '--segment-size', '1M', '--persist', '--http', 'off'];
      const s1 = await startServer(['--size', '8M', ...base], { socket: join(dir, 'a.sock') });
      await runOk('nbdsh', ['-u', s1.uri(), '-c', `h.pwrite(b"durable!" * 512, 4096); h.flush()`]);
      s1.proc.kill('SIGKILL');
      await s1.exited;
      const small = await run(process.execPath, [ZDEDUP, 'serve', '--socket', join(dir, 'b.sock'), '--size', '4M', ...base]);
      assert.equal(small.code, 2, small.stderr);
      assert.match(small.stderr, /^zdedup: ERR_INVALID_ARGUMENT: export "" holds 8388608 bytes/m);
      const page = await run(process.execPath, [ZDEDUP, 'serve', '--socket', join(dir, 'b.sock'), '--size', '8M', '--page-size', '8K', ...base]);
      assert.equal(page.code, 2, page.stderr);
      assert.match(page.stderr, /page size 4096/);
      const s2 = await startServer(['--size', '12M', ...base], { socket: join(dir, 'a.sock') });
      try {
        const r = await runOk('nbdsh', ['-u', s2.uri(), '-c', 'print(h.get_size()); print(h.pread(4096, 4096) == b"durable!" * 512)']);
        assert.equal(r.stdout.trim(), `${12 * MiB}\nTrue`);
      } finally {
        await s2.stop();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

