/**
 * `npm run bench:cache`: cache exports (--export NAME:cache=PATH) beside nbdkit's file plugin on
 * the same image, in one run.
 *
 * The image is a generated disk image: an ext4 filesystem built by `mke2fs -d` from real files
 * (the first ~70% of IMAGE MiB of --source, default /usr/share: text, locales, icons, binaries;
 * the rest free space), IMAGE MiB, in --dir on the local disk (not tmpfs). Four byte-identical copies of it are made for the 4-image run.
 *
 *   nbdkit-file   nbdkit file plugin (the anchor): cold read with the image dropped from the
 *                 kernel's page cache (posix_fadvise DONTNEED), then a warm read (served by the
 *                 page cache, which now holds the whole image)
 *   zdedup-1      zdedup serve --export a:cache=IMG: cold read (empty cache, image dropped from the
 *                 page cache: every page read from the file, then cached), warm read (from the cache)
 *   zdedup-4      zdedup serve with 4 cache exports of the 4 copies: the identity scan is waited
 *                 for (its time is reported), then a cold read of the first, then the 2nd..4th (from
 *                 RAM: their file reads are reported, expected 0)
 * Reads are nbdcopy URI null: (MB = 10^6 bytes). A warm read of each zdedup run is also copied to
 * /dev/shm and byte-compared with the image.
 *
 * RAM per cached GiB: the server's RSS growth (VmRSS after the reads minus VmRSS when ready)
 * divided by the GiB of image content cached (1 GiB-image: 1; four: 4, of which 3 are identical
 * copies); also the store's own figure (pool_total_size + metadata_bytes). The page cache is kept
 * out of it: the cache export drops what it read from the page cache.
 *
 *   usage: npm run bench:cache -- [--image-mib 1024] [--source /usr/share] [--dir /var/tmp/zdedup-bench-cache] [--no-save]
 *   quick: npm run bench:cache -- --image-mib 256 --no-save
 * Results: bench/results/cache-<date>.{json,md}. Needs nbdkit, nbdcopy (libnbd-bin), mke2fs (e2fsprogs).
 */
import { execFileSync } from 'node:child_process';
import { closeSync, copyFileSync, existsSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { dropCached } from '../src/tiers/disk/aligned.js';
import { describeMachine, machineMarkdown } from './machine.js';
import { filesEqual, freePort, loadavg, REPO, saveResults, SERVE_NODE_FLAGS, sleep, spawnServer, stopServer, toolVersion, waitListening } from './servers.js';

const { values: opt } = parseArgs({
  options: {
    'image-mib': { type: 'string', default: '1024' },
    source: { type: 'string', default: '/usr/share' },
    dir: { type: 'string', default: '/var/tmp/zdedup-bench-cache' },
    'no-save': { type: 'boolean', default: false },
  },
});
const IMAGE_MIB = Number(opt['image-mib']);
const DIR = opt.dir!;
const GiB = 2 ** 30;

interface Read { what: string; mb_s: number; file_read_bytes: number | null; verified: boolean | null }
interface Run {
  server: string;
  images: number;
  reads: Read[];
  scan_seconds: number | null;
  rss_before_bytes: number | null;
  rss_after_bytes: number | null;
  store: Record<string, number> | null;
  error: string | null;
}

function vmRss(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]) * 1024;
}

function dropFromPageCache(path: string): void {
  const fd = openSync(path, 'r');
  try { dropCached(fd, 0, 0); } finally { closeSync(fd); }
}

/** nbdcopy URI null: (or to `out`), timed; MB/s. */
function timedRead(uri: string, bytes: number, out = 'null:'): number {
  const t0 = process.hrtime.bigint();
  execFileSync('nbdcopy', [uri, out], { stdio: ['ignore', 'ignore', 'pipe'] });
  return bytes / 1e6 / (Number(process.hrtime.bigint() - t0) / 1e9);
}

interface StatsDoc { store: Record<string, number>; exports: { name: string; cache?: { identity: string; file_read_bytes: number } }[] }
async function stats(http: string): Promise<StatsDoc> {
  // A kept-alive socket the server closed while a long read ran fails once ("fetch failed"): retry.
  for (let i = 0; ; i++) {
    try {
      const r = await fetch(`http://${http}/stats`, { signal: AbortSignal.timeout(5000) });
      return (await r.json()) as StatsDoc;
    } catch (e) {
      if (i >= 3) throw e;
      await sleep(50);
    }
  }
}

function makeImage(): { image: string; bytes: number } {
  mkdirSync(DIR, { recursive: true });
  const image = join(DIR, `image-${IMAGE_MIB}M.ext4`);
  if (!existsSync(image) || statSync(image).size !== IMAGE_MIB * 2 ** 20) {
    rmSync(image, { force: true });
    process.stderr.write(`bench:cache: building a ${IMAGE_MIB} MiB ext4 image from files of ${opt.source}\n`);
    // A staging tree of the source's files up to ~70% of the image (the rest stays free space),
    // copied in by mke2fs -d.
    const stage = join(DIR, 'stage');
    rmSync(stage, { recursive: true, force: true });
    let budget = IMAGE_MIB * 2 ** 20 * 0.7;
    const walk = (dir: string, rel: string): void => {
      let names: string[];
      try { names = readdirSync(dir).sort(); } catch { return; }
      for (const name of names) {
        if (budget <= 0) return;
        const src = join(dir, name);
        let st;
        try { st = lstatSync(src); } catch { continue; }
        if (st.isDirectory()) walk(src, join(rel, name));
        else if (st.isFile() && st.size <= budget) {
          mkdirSync(join(stage, rel), { recursive: true });
          try { copyFileSync(src, join(stage, rel, name)); budget -= st.size + 4096; } catch { /* unreadable: skipped */ }
        }
      }
    };
    walk(opt.source!, '');
    execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', stage, image, `${IMAGE_MIB}M`], { stdio: ['ignore', 'ignore', 'pipe'] });
    rmSync(stage, { recursive: true, force: true });
  }
  return { image, bytes: statSync(image).size };
}

async function runNbdkit(image: string, bytes: number): Promise<Run> {
  const run: Run = { server: 'nbdkit-file', images: 1, reads: [], scan_seconds: null, rss_before_bytes: null, rss_after_bytes: null, store: null, error: null };
  const socket = join(DIR, 'nbdkit.sock');
  rmSync(socket, { force: true });
  const { child, log } = spawnServer('nbdkit', ['-f', '--exit-with-parent', '-U', socket, 'file', `file=${image}`], 2000);
  try {
    await waitListening(socket, child, log, 400);
    const uri = `nbd+unix:///?socket=${socket}`;
    dropFromPageCache(image);
    run.reads.push({ what: 'cold', mb_s: timedRead(uri, bytes), file_read_bytes: bytes, verified: null });
    run.reads.push({ what: 'warm (page cache)', mb_s: timedRead(uri, bytes), file_read_bytes: 0, verified: null });
  } catch (e) {
    run.error = (e as Error).message.split('\n')[0]!;
  } finally {
    await stopServer(child, 200);
  }
  return run;
}

async function runZdedup(images: string[], bytes: number): Promise<Run> {
  const n = images.length;
  const run: Run = { server: `zdedup-${n}`, images: n, reads: [], scan_seconds: null, rss_before_bytes: null, rss_after_bytes: null, store: null, error: null };
  const socket = join(DIR, 'zdedup.sock');
  rmSync(socket, { force: true });
  const http = `127.0.0.1:${await freePort()}`;
  const names = images.map((_, i) => `img${i}`);
  const args = [...SERVE_NODE_FLAGS, join(REPO, 'bin/zdedup.js'), 'serve', '--socket', socket, '--http', http,
    ...images.flatMap((f, i) => ['--export', `${names[i]}:cache=${f}`])];
  const t0 = Date.now();
  const { child, log } = spawnServer(process.execPath, args, 4000);
  const out = join('/dev/shm', `zdedup-bench-cache-${process.pid}.out`);
  try {
    await waitListening(socket, child, log, 400);
    // Wait for the identity scan (only images of equal size are scanned).
    for (;;) {
      const d = await stats(http).catch(() => null); // /stats starts listening just after NBD: keep asking
      if (d !== null && d.exports.every((e) => e.cache !== undefined && e.cache.identity !== 'queued' && e.cache.identity !== 'scanning')) break;
      await sleep(100);
    }
    if (n > 1) run.scan_seconds = (Date.now() - t0) / 1000;
    for (const f of images) dropFromPageCache(f); // the scan read them through the page cache's hands
    run.rss_before_bytes = vmRss(child.pid!);
    const uri = (i: number): string => `nbd+unix:///${names[i]}?socket=${socket}`;
    const fileBytes = async (i: number): Promise<number> => (await stats(http)).exports[i]!.cache!.file_read_bytes;
    run.reads.push({ what: 'cold', mb_s: timedRead(uri(0), bytes), file_read_bytes: await fileBytes(0), verified: null });
    if (n === 1) {
      const before = await fileBytes(0);
      run.reads.push({ what: 'warm (cache)', mb_s: timedRead(uri(0), bytes), file_read_bytes: (await fileBytes(0)) - before, verified: null });
    } else {
      for (let i = 1; i < n; i++) run.reads.push({ what: `image ${i + 1} (identical)`, mb_s: timedRead(uri(i), bytes), file_read_bytes: await fileBytes(i), verified: null });
    }
    run.rss_after_bytes = vmRss(child.pid!);
    run.store = (await stats(http)).store;
    // Verify one warm read byte for byte.
    const last = run.reads[run.reads.length - 1]!;
    rmSync(out, { force: true });
    execFileSync('nbdcopy', [uri(n - 1), out], { stdio: ['ignore', 'ignore', 'pipe'] });
    last.verified = filesEqual(images[n - 1]!, out);
  } catch (e) {
    run.error = `${(e as Error).message.split('\n')[0]} | ${log().trim().split('\n').slice(-2).join(' / ')}`;
  } finally {
    rmSync(out, { force: true });
    await stopServer(child, 200);
  }
  return run;
}

const f1 = (v: number | null | undefined): string => (v === null || v === undefined ? '-' : v.toFixed(1));
const f2 = (v: number | null | undefined): string => (v === null || v === undefined ? '-' : v.toFixed(2));

async function main(): Promise<void> {
  const { image, bytes } = makeImage();
  const copies = [image, ...[2, 3, 4].map((i) => join(DIR, `copy${i}.ext4`))];
  for (const c of copies.slice(1)) if (!existsSync(c) || statSync(c).size !== bytes) copyFileSync(image, c);
  const load0 = loadavg();
  const runs = [await runNbdkit(image, bytes), await runZdedup([image], bytes), await runZdedup(copies, bytes)];
  const load1 = loadavg();
  const nb = runs[0]!, z1 = runs[1]!, z4 = runs[2]!;
  const gib = bytes / GiB;
  const ramPerGiB = (r: Run, cachedGiB: number): number | null =>
    r.rss_after_bytes === null || r.rss_before_bytes === null ? null : (r.rss_after_bytes - r.rss_before_bytes) / cachedGiB / 2 ** 20;
  const storePerGiB = (r: Run, cachedGiB: number): number | null =>
    r.store === null ? null : ((r.store['pool_total_size'] ?? 0) + (r.store['metadata_bytes'] ?? 0)) / cachedGiB / 2 ** 20;
  const summary = {
    cold_ratio: z1.reads[0] && nb.reads[0] ? z1.reads[0].mb_s / nb.reads[0].mb_s : null,
    warm_ratio: z1.reads[1] && nb.reads[1] ? z1.reads[1].mb_s / nb.reads[1].mb_s : null,
    identical_ratio: z4.reads[1] && nb.reads[1] ? z4.reads.slice(1).reduce((a, r) => a + r.mb_s, 0) / (z4.reads.length - 1) / nb.reads[1].mb_s : null,
    ram_mib_per_cached_gib_1: ramPerGiB(z1, gib),
    ram_mib_per_cached_gib_4: ramPerGiB(z4, 4 * gib),
    store_mib_per_cached_gib_1: storePerGiB(z1, gib),
    store_mib_per_cached_gib_4: storePerGiB(z4, 4 * gib),
  };
  const machine = describeMachine(['nbdkit', 'libnbd-bin', 'e2fsprogs']);
  const md = [
    `# bench:cache — cache exports beside nbdkit's file plugin (${new Date().toISOString().slice(0, 10)})`,
    '',
    `Image: ${IMAGE_MIB} MiB ext4 built by \`mke2fs -d ${opt.source}\` in ${DIR} (local disk); four identical copies for zdedup-4.`,
    `Reads: \`nbdcopy URI null:\`, MB = 10^6 B. Cold = the image dropped from the page cache first. nbdkit ${toolVersion('nbdkit')}.`,
    `Load average before/after: ${load0} / ${load1} (other work shared the machine when it is above ~1).`,
    '',
    '| server | read | MB/s | × nbdkit (same kind) | file bytes read | verified |',
    '|---|---|---|---|---|---|',
    ...runs.flatMap((r) => (r.error !== null ? [`| ${r.server} | ERROR: ${r.error} | | | | |`] : r.reads.map((x, i) => {
      const base = nb.reads[x.what === 'cold' ? 0 : 1];
      return `| ${r.server} | ${x.what} | ${f1(x.mb_s)} | ${r === nb ? '1.00' : f2(base ? x.mb_s / base.mb_s : null)} | ${x.file_read_bytes ?? '-'} | ${x.verified === null ? '-' : x.verified ? 'yes' : 'NO'} |`;
    }))),
    '',
    '| zdedup run | images cached (GiB, logical) | RSS growth MiB | RSS MiB per cached GiB | store (pool + metadata) MiB per cached GiB | identity scan s |',
    '|---|---|---|---|---|---|',
    ...[[z1, gib], [z4, 4 * gib]].map(([r, g]) => {
      const run = r as Run, cached = g as number;
      const growth = run.rss_after_bytes !== null && run.rss_before_bytes !== null ? (run.rss_after_bytes - run.rss_before_bytes) / 2 ** 20 : null;
      return `| ${run.server} | ${f2(cached)} | ${f1(growth)} | ${f1(ramPerGiB(run, cached))} | ${f1(storePerGiB(run, cached))} | ${f1(run.scan_seconds)} |`;
    }),
    '',
    `Summary: cold read ${f2(summary.cold_ratio)}× nbdkit-file cold; warm read ${f2(summary.warm_ratio)}× nbdkit-file warm (page cache); ` +
      `identical images 2-4 ${f2(summary.identical_ratio)}× nbdkit-file warm; RAM ${f1(summary.ram_mib_per_cached_gib_1)} MiB per cached GiB for 1 image, ` +
      `${f1(summary.ram_mib_per_cached_gib_4)} MiB per cached GiB for 4 identical images.`,
    '',
    machineMarkdown(machine),
    '',
  ].join('\n');
  process.stdout.write(md);
  if (!opt['no-save']) saveResults('cache', { machine, image_mib: IMAGE_MIB, source: opt.source, runs, summary, loadavg: [load0, load1] }, md);
}

await main();
