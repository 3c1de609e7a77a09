/**
 * `npm run bench:remote`: the remote tier on a real 6-node Redis Cluster (3 masters + 3
 * replicas, Debian's redis-server, loopback), measured beside the RAM pool and the disk tier in
 * the same run, through the PageStore's async calls (what the NBD server uses):
 *
 *   1. 4 KiB load latency p50/p99: RAM hits, disk-tier hits, remote hits (target: remote p99 <= 500 µs).
 *   2. Write MB/s with the tier absorbing 4x the pool (32 MiB pool, 320 MiB of half-compressible
 *      pages): RAM only (unbounded pool, the anchor), disk tier, remote tier; ratios to the anchor.
 *   3. Network bytes per logical byte written: client -> masters (INFO total_net_input_bytes of
 *      the masters), and including replication (all nodes).
 *   4. Cross-host saving: two hosts (same domain and secret), each holding two of four identical
 *      VM-like images; the cluster's used memory growth for the second host against the first
 *      (ideal: the second adds nothing). Target: >= 90% of the ideal saving.
 *
 * Results: bench/results/remote-DATE.{md,json}.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Cluster } from 'ioredis';
import { PageStore, type AreaId } from '../src/core/page-store.js';
import { RemoteTier } from '../src/tiers/remote/remote-tier.js';
import { RedisCluster, redisCli } from '../test/helpers/redis-cluster.js';
import { PAGE, Rng, structPage, textPage } from './corpora.js';
import { describeMachine, machineMarkdown } from './machine.js';
import { loadavg, saveResults, sleep } from './servers.js';

const MiB = 1 << 20;
const SECRET = Buffer.from('bench-remote-secret-0123456789abcdef');
const dir = mkdtempSync(join(process.env.ZDEDUP_BENCH_DIR ?? tmpdir(), 'zdedup-bench-remote-'));
let diskN = 0;

function pct(a: number[], p: number): number {
  const s = [...a].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.floor(s.length * p))]!;
}
const r1 = (x: number): number => Math.round(x * 10) / 10;

/** Distinct half-random pages (compress about 2:1). */
function halfRandom(i: number, page: Buffer): void {
  page.fill(0);
  new Rng(i * 2654435761 + 1).fill(page, 0, PAGE / 2);
}

/** A VM-like image page: zero, text, struct-like or random, with repeats inside the image. */
function vmPage(i: number, page: Buffer): void {
  const rng = new Rng(i % 14000 + 7); // pages repeat beyond 14000 (duplicate blocks inside one image)
  const kind = rng.below(20);
  page.fill(0);
  if (kind < 6) return;            // 30% zero
  if (kind < 13) textPage(rng, page); // 35% text
  else if (kind < 18) structPage(rng, page); // 25% binary structs
  else rng.fill(page);              // 10% random (compressed binaries)
}

type TierKind = 'ram' | 'disk' | 'remote';

function makeStore(kind: TierKind, cluster: RedisCluster, maxPool: number, domain: string): { store: PageStore; remote: RemoteTier | null } {
  if (kind === 'ram') return { store: new PageStore({}), remote: null };
  if (kind === 'disk') {
    return { store: new PageStore({ maxPoolBytes: maxPool, backing: { path: join(dir, `b${diskN++}.img`), size: 1024 * MiB } }), remote: null };
  }
  const remote = new RemoteTier({ url: cluster.url, domain, secret: SECRET, pageSize: PAGE });
  return { store: new PageStore({ maxPoolBytes: maxPool, tier: remote }), remote };
}

async function fillStore(store: PageStore, area: AreaId, pages: number, gen: (i: number, p: Buffer) => void, base = 0): Promise<void> {
  const B = 32; // 128 KiB per call, like an NBD WRITE
  const buf = Buffer.alloc(B * PAGE);
  for (let i = 0; i < pages; i += B) {
    const n = Math.min(B, pages - i);
    for (let k = 0; k < n; k++) gen(base + i + k, buf.subarray(k * PAGE, (k + 1) * PAGE));
    const r = await store.startStoreBatch(area, i, buf.subarray(0, n * PAGE));
    if (r !== n) throw new Error(`store refused at page ${i + r}: ${store.lastReject}`);
  }
}

// ---------------------------------------------------------------------------------------------

type LatKind = TierKind | 'redis_get_floor';

/**
 * Loads, one at a time, interleaved round-robin over the four kinds so that whatever else runs on
 * the machine hits them alike: RAM hits (unbounded pool), disk-tier hits and remote hits (4 MiB
 * pool, 64 MiB of pages: almost all in the tier; only loads that really read the tier count),
 * and the client's floor: a bare ioredis GET of a 2 KiB value on the same cluster.
 */
async function latency(cluster: RedisCluster): Promise<Record<LatKind, { p50_us: number; p99_us: number; loads: number }>> {
  const PAGES = 16384;
  const stores = {} as Record<TierKind, { store: PageStore; remote: RemoteTier | null; area: AreaId }>;
  for (const kind of ['ram', 'disk', 'remote'] as TierKind[]) {
    const { store, remote } = makeStore(kind, cluster, 4 * MiB, 'bench-lat');
    const area = store.createArea('a', PAGES);
    await fillStore(store, area, PAGES, halfRandom);
    await store.settle();
    await remote?.drain();
    store.setBackground(false); // no writeback during the measurement
    stores[kind] = { store, remote, area };
  }
  const floor = new Cluster(cluster.ports.map((port) => ({ host: '127.0.0.1', port })), { enableAutoPipelining: true });
  const v = Buffer.alloc(2048, 1);
  for (let i = 0; i < 1000; i++) await floor.set(`floor:${i}`, v);
  const lat: Record<LatKind, number[]> = { ram: [], disk: [], remote: [], redis_get_floor: [] };
  const into = Buffer.alloc(PAGE);
  const rng = new Rng(99);
  for (let n = 0; n < 4000; n++) {
    for (const kind of ['ram', 'disk', 'remote', 'redis_get_floor'] as LatKind[]) {
      if (kind === 'redis_get_floor') {
        const t0 = process.hrtime.bigint();
        await floor.getBuffer(`floor:${rng.below(1000)}`);
        lat[kind].push(Number(process.hrtime.bigint() - t0) / 1000);
        continue;
      }
      const { store, area } = stores[kind];
      const slot = rng.below(PAGES);
      if (kind !== 'ram' && !store.needsTierRead(area, slot)) continue; // only true tier hits count
      const t0 = process.hrtime.bigint();
      await store.loadAsync(area, slot, into);
      lat[kind].push(Number(process.hrtime.bigint() - t0) / 1000);
    }
  }
  floor.disconnect();
  for (const k of ['ram', 'disk', 'remote'] as TierKind[]) await stores[k].store.close();
  const out = {} as Record<LatKind, { p50_us: number; p99_us: number; loads: number }>;
  for (const k of Object.keys(lat) as LatKind[]) out[k] = { p50_us: r1(pct(lat[k], 0.5)), p99_us: r1(pct(lat[k], 0.99)), loads: lat[k].length };
  return out;
}

function netInput(cluster: RedisCluster, ports: number[]): number {
  let n = 0;
  for (const p of ports) n += Number(/total_net_input_bytes:(\d+)/.exec(redisCli(p, 'INFO', 'stats'))?.[1] ?? 0);
  return n;
}

async function writes(cluster: RedisCluster): Promise<{ rows: Record<TierKind, { mb_s: number; ratio: number; tier_bytes: number }>; net: Record<string, number> }> {
  const POOL = 32 * MiB;
  const PAGES = (320 * MiB) / PAGE;
  const rows = {} as Record<TierKind, { mb_s: number; ratio: number; tier_bytes: number }>;
  const net: Record<string, number> = {};
  for (const kind of ['ram', 'disk', 'remote'] as TierKind[]) {
    const { store, remote } = makeStore(kind, cluster, POOL, `bench-write`);
    const area = store.createArea('a', PAGES);
    const masters = cluster.masters();
    const in0 = netInput(cluster, masters), all0 = netInput(cluster, cluster.ports);
    const t0 = process.hrtime.bigint();
    await fillStore(store, area, PAGES, halfRandom, 1_000_000);
    await store.settle();
    await remote?.drain(); // acknowledged by master + replica
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    const s = store.stats();
    rows[kind] = { mb_s: r1((PAGES * PAGE) / secs / 1e6), ratio: 0, tier_bytes: kind === 'remote' ? s.remote_bytes : s.disk_record_bytes_appended };
    if (kind === 'remote') {
      const logical = PAGES * PAGE;
      net.client_to_masters_per_logical = Math.round(((netInput(cluster, masters) - in0) / logical) * 1000) / 1000;
      net.all_nodes_incl_replication_per_logical = Math.round(((netInput(cluster, cluster.ports) - all0) / logical) * 1000) / 1000;
      net.remote_bytes_sent_per_logical = Math.round((s.remote_bytes_sent / logical) * 1000) / 1000;
      net.tier_bytes_per_pool = Math.round((s.remote_bytes / POOL) * 10) / 10;
    }
    await store.close();
  }
  for (const k of Object.keys(rows) as TierKind[]) rows[k].ratio = Math.round((rows[k].mb_s / rows.ram.mb_s) * 1000) / 1000;
  return { rows, net };
}

async function crossHost(cluster: RedisCluster): Promise<Record<string, number>> {
  const IMG = 16384; // 64 MiB per image
  const hosts = [0, 1].map(() => makeStore('remote', cluster, 1 * MiB, 'bench-fleet'));
  const mem: number[] = [cluster.usedMemory()];
  for (let h = 0; h < 2; h++) {
    const { store, remote } = hosts[h]!;
    for (let img = 0; img < 2; img++) {
      const area = store.createArea(`vm${h * 2 + img}`, IMG);
      await fillStore(store, area, IMG, vmPage); // four identical images
    }
    await store.settle();
    await remote!.drain();
    await sleep(500);
    mem.push(cluster.usedMemory());
  }
  const a = hosts[0]!.store.stats(), b = hosts[1]!.store.stats();
  const growthA = mem[1]! - mem[0]!, growthB = mem[2]! - mem[1]!;
  for (const h of hosts) await h.store.close();
  return {
    logical_bytes_per_host: 2 * IMG * PAGE,
    host_a_cluster_growth_bytes: growthA,
    host_b_cluster_growth_bytes: growthB,
    host_a_uploads: a.remote_stores, host_b_uploads: b.remote_stores, host_b_remote_dedup_hits: b.remote_dedup_hits,
    // Without sharing the second host would add what the first did; ideally it adds nothing.
    saving_of_ideal: Math.round(((growthA - growthB) / growthA) * 1000) / 1000,
  };
}

// ---------------------------------------------------------------------------------------------

const cluster = await RedisCluster.start({ nodeTimeoutMs: 2000 });
try {
  const load0 = loadavg();
  const only = process.env.BENCH_REMOTE_ONLY;
  if (only !== undefined) { // one section, nothing saved (for trying settings)
    console.log(only === 'writes' ? await writes(cluster) : only === 'latency' ? await latency(cluster) : await crossHost(cluster));
    throw new Error('BENCH_REMOTE_ONLY: not saved');
  }
  const lat = await latency(cluster);
  console.log('latency', lat);
  const w = await writes(cluster);
  console.log('writes', w);
  const x = await crossHost(cluster);
  console.log('cross-host', x);
  const machine = describeMachine(['redis-server']);
  const results = { machine, loadavg_start: load0, loadavg_end: loadavg(), latency: lat, writes: w.rows, network: w.net, cross_host: x,
    targets: { remote_hit_p99_us_max: 500, cross_host_saving_of_ideal_min: 0.9 } };
  const md = `# Remote tier benchmark (npm run bench:remote)

${machineMarkdown(machine)} Redis Cluster: 6 local redis-server processes (3 masters + 3 replicas) on
loopback, ioredis client. Load average at start ${load0}, at end ${loadavg()} (other work shared the machine).

## 4 KiB load latency through PageStore.loadAsync (tier hits only for disk and remote), interleaved

| where | p50 µs | p99 µs | loads | p99 / RAM p99 |
|---|---|---|---|---|
${(['ram', 'disk', 'remote', 'redis_get_floor'] as LatKind[]).map((k) => `| ${k} | ${lat[k].p50_us} | ${lat[k].p99_us} | ${lat[k].loads} | ${r1(lat[k].p99_us / lat.ram.p99_us)} |`).join('\n')}

The four kinds are measured interleaved (one load of each in turn), so load from other work hits
them alike. redis_get_floor: a bare ioredis GET of a 2 KiB value on the same cluster (what the
client and the servers cost without zdedup); remote p99 / floor p99 = ${r1(lat.remote.p99_us / lat.redis_get_floor.p99_us)}.

Target: remote-hit p99 ≤ 500 µs → **${lat.remote.p99_us <= 500 ? 'met' : 'not met'}** (${lat.remote.p99_us} µs; ${r1(lat.remote.p99_us / lat.disk.p99_us)}× the disk-hit p99).

## Writes: 320 MiB of half-compressible pages, 32 MiB pool, the tier absorbing the rest (≥ 4× the pool)

| tier | MB/s (logical) | ratio to RAM only | bytes the tier took |
|---|---|---|---|
${(['ram', 'disk', 'remote'] as TierKind[]).map((k) => `| ${k} | ${w.rows[k].mb_s} | ${w.rows[k].ratio} | ${w.rows[k].tier_bytes} |`).join('\n')}

Remote time includes every object acknowledged by its master and a replica (WAIT).

## Network bytes per logical byte written (remote run)

| measure | bytes per logical byte |
|---|---|
| client → masters (INFO total_net_input_bytes of masters) | ${w.net.client_to_masters_per_logical} |
| all nodes, replication included | ${w.net.all_nodes_incl_replication_per_logical} |
| remote_bytes_sent (keys + values, client count) | ${w.net.remote_bytes_sent_per_logical} |

The tier took ${w.net.tier_bytes_per_pool}× the pool's size.

## Cross-host dedup: two hosts, each holding two of four identical VM-like 64 MiB images

| | host A (first) | host B (second) |
|---|---|---|
| cluster used-memory growth | ${(x.host_a_cluster_growth_bytes! / MiB).toFixed(1)} MiB | ${(x.host_b_cluster_growth_bytes! / MiB).toFixed(1)} MiB |
| values uploaded | ${x.host_a_uploads} | ${x.host_b_uploads} |
| remote dedup hits | — | ${x.host_b_remote_dedup_hits} |

Saving against the ideal (host B adds nothing): **${(x.saving_of_ideal! * 100).toFixed(1)}%** (target ≥ 90% → **${x.saving_of_ideal! >= 0.9 ? 'met' : 'not met'}**).
`;
  saveResults('remote', results, md);
} finally {
  await cluster.stop();
  rmSync(dir, { recursive: true, force: true });
}
