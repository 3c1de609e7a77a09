/**
 * Memory of a server with a bounded pool and a disk tier while 1 GiB goes through it: the memory a
 * user sees is the server's RSS plus the backing file's pages in the page cache (the tier reads and
 * writes O_DIRECT, so cold data must not come back into RAM through the cache).
 *
 *   generator --pipe--> nbdcopy - URI          1 GiB of pages (zero, duplicate, half-random, random, text)
 *   nbdcopy URI - --pipe--> compare with the regenerated stream
 *   meanwhile, every 100 ms: VmRSS of the server, fincore of the backing file
 *
 * Bound: (RSS - RSS at start) + cached backing pages < pool (64 MiB) + 96 MiB. The fixed part is
 * what the server holds beyond the pool: two segment write buffers (2 x 4 MiB), per-object
 * metadata (~40 B x ~200 Ki objects = 8 MiB), slot maps (4 B x 256 Ki pages = 1 MiB), NBD request
 * buffers (up to 16 in flight x 4 connections), and V8 heap growth. The numbers are logged.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { SYSTEM_PATH, hasTool, startServer } from './nbd/harness.js';
import { MiB, PAGE, TierData, cachedBytes, storeStats, vmRss } from './nbd/tier-helpers.js';

const POOL = 64 * MiB;
const TOTAL = 1024 * MiB;
const CHUNK = 1 * MiB;
const SEED = 11;

/** Runs nbdcopy with its stdin fed from `feed` (or its stdout read by `drain`); rejects unless it exits 0. */
function nbdcopyPipe(args: string[], io: { feed?: (w: NodeJS.WritableStream) => Promise<void>; drain?: (r: NodeJS.ReadableStream) => Promise<void> }): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn('nbdcopy', args, { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, PATH: SYSTEM_PATH } });
    let err = '';
    p.stderr.setEncoding('utf8').on('data', (d: string) => { err = (err + d).slice(-4000); });
    const work: Promise<void>[] = [];
    if (io.feed) work.push(io.feed(p.stdin).then(() => { p.stdin.end(); }));
    else p.stdin.end();
    if (io.drain) work.push(io.drain(p.stdout));
    else p.stdout.resume();
    const exited = new Promise<number | null>((r) => p.on('close', (code) => r(code)));
    p.on('error', reject);
    Promise.all([...work, exited]).then(async () => {
      const code = await exited;
      if (code === 0) resolve();
      else reject(new Error(`nbdcopy ${args.join(' ')} exited ${code}: ${err}`));
    }, reject);
  });
}

/** Writes TOTAL bytes of TierData(SEED) into w, honouring backpressure. */
async function feed(w: NodeJS.WritableStream): Promise<void> {
  const gen = new TierData(SEED);
  for (let off = 0; off < TOTAL; off += CHUNK) {
    const buf = Buffer.alloc(CHUNK);
    gen.fill(buf, off / PAGE);
    if (!w.write(buf)) await new Promise<void>((r) => w.once('drain', () => r()));
  }
}

test('a 64 MiB pool with a disk tier: RSS growth + cached backing pages stay below pool + 96 MiB while 1 GiB goes in and out',
  { timeout: 10 * 60_000 }, async (t) => {
    if (!hasTool('nbdcopy')) { t.skip('nbdcopy not installed'); return; }
    const haveFincore = hasTool('fincore');
    if (!haveFincore) t.diagnostic('fincore (util-linux) not installed: the page-cache part is not measured (counted as 0)');
    const dir = mkdtempSync(join(tmpdir(), 'zdedup-tier-mem-'));
    const backing = join(dir, 'b.img');
    const s = await startServer(['--size', String(TOTAL), '--max-pool', '64M', '--backing', backing, '--backing-size', '2G']);
    try {
      const pid = s.proc.pid!;
      const base = vmRss(pid);
      const samples: { phase: string; rss: number; cached: number }[] = [];
      let phase = 'write';
      let stop = false;
      const sampler = (async () => {
        while (!stop) {
          const rss = vmRss(pid);
          const cached = haveFincore ? (await cachedBytes(backing)) ?? 0 : 0;
          samples.push({ phase, rss, cached });
          await new Promise((r) => setTimeout(r, 100));
        }
      })();
      try {
        await nbdcopyPipe(['--flush', '-', s.uri()], { feed });
        const afterWrite = await storeStats(s);
        phase = 'read';
        // read it all back and compare with the regenerated stream
        const gen = new TierData(SEED);
        let pos = 0;
        let mismatch = -1;
        const want = Buffer.alloc(CHUNK);
        let wantPos = -CHUNK;
        await nbdcopyPipe([s.uri(), '-'], {
          drain: async (r) => {
            for await (const piece of r as AsyncIterable<Buffer>) {
              let i = 0;
              while (i < piece.length) {
                if (pos >= wantPos + CHUNK) { wantPos = pos; gen.fill(want, pos / PAGE); }
                const n = Math.min(piece.length - i, wantPos + CHUNK - pos);
                if (mismatch < 0 && !piece.subarray(i, i + n).equals(want.subarray(pos - wantPos, pos - wantPos + n))) mismatch = pos;
                pos += n;
                i += n;
              }
            }
          },
        });
        assert.equal(pos, TOTAL, 'read back the whole export');
        assert.equal(mismatch, -1, `read back differs from what was written near byte ${mismatch}`);
        phase = 'after';
        await new Promise((r) => setTimeout(r, 500));
        const end = await storeStats(s);
        const doc = end;
        stop = true;
        await sampler;

        const peak = samples.reduce((m, x) => (x.rss - base + x.cached > m.rss - base + m.cached ? x : m), samples[0]!);
        const maxRss = Math.max(...samples.map((x) => x.rss));
        const maxCached = Math.max(...samples.map((x) => x.cached));
        const last = samples.at(-1)!;
        const mib = (b: number): string => (b / MiB).toFixed(1);
        t.diagnostic(`RSS at start ${mib(base)} MiB; peak RSS ${mib(maxRss)} MiB (growth ${mib(maxRss - base)}); peak cached backing ${mib(maxCached)} MiB; ` +
          `peak growth+cached ${mib(peak.rss - base + peak.cached)} MiB during ${peak.phase}; after: RSS ${mib(last.rss)} MiB, cached ${mib(last.cached)} MiB; ${samples.length} samples`);
        t.diagnostic(`after write: pool_total_size ${mib(afterWrite['pool_total_size']!)} MiB, compressed ${mib(afterWrite['compressed_bytes']!)} MiB, ` +
          `metadata ${mib(afterWrite['metadata_bytes']!)} MiB, written_back_pages ${afterWrite['written_back_pages']}, disk_bytes ${mib(afterWrite['disk_bytes']!)} MiB; ` +
          `end: disk_loads ${doc['disk_loads']}, promoted ${doc['promoted_pages']}, pool ${mib(doc['pool_total_size']!)} MiB`);
        assert.ok(afterWrite['written_back_pages']! > 0, 'the pool overflowed into the disk tier');
        assert.ok(doc['disk_loads']! > 0, 'reads came from the disk tier');
        assert.ok(doc['pool_total_size']! <= POOL);
        assert.ok(samples.length >= 10, 'sampled during the run');
        assert.ok(peak.rss - base + peak.cached < POOL + 96 * MiB,
          `RSS growth ${mib(peak.rss - base)} MiB + cached backing ${mib(peak.cached)} MiB >= pool ${mib(POOL)} + 96 MiB (during ${peak.phase})`);
      } finally {
        stop = true;
        await sampler;
      }
    } finally {
      const r = await s.stop();
      assert.equal(r.code, 0, `server exit after SIGTERM (signal ${r.signal})`);
      rmSync(dir, { recursive: true, force: true });
    }
  });
