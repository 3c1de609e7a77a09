/**
 * Picks the Redis Cluster client by measurement: ioredis and node-redis (`redis`) side by side on
 * one real 6-node loopback cluster. Per client: 4 KiB GET latency one at a time (p50/p99, what a
 * remote-hit load costs) and the rate of 4 KiB SETs issued 256 at a time (both clients pipeline
 * commands issued in one tick per node). Run: `npm run build && node dist/bench/redis-clients.js`.
 */
import { writeFileSync } from 'node:fs';
import { Cluster } from 'ioredis';
import { createCluster } from 'redis';
import { RedisCluster } from '../test/helpers/redis-cluster.js';
import { describeMachine } from './machine.js';

interface Client { name: string; set(k: string, v: Buffer): Promise<unknown>; get(k: string): Promise<unknown>; close(): Promise<unknown> }

function pct(a: number[], p: number): number { const s = [...a].sort((x, y) => x - y); return s[Math.min(s.length - 1, Math.floor(s.length * p))]!; }

async function measure(c: Client): Promise<{ get_p50_us: number; get_p99_us: number; set_mb_s: number }> {
  const v = Buffer.alloc(4096, 7);
  const N = 20000;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < N; i += 256) {
    const ps: Promise<unknown>[] = [];
    for (let j = i; j < Math.min(N, i + 256); j++) ps.push(c.set(`${c.name}:${j}`, v));
    await Promise.all(ps);
  }
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const lat: number[] = [];
  for (let i = 0; i < 3000; i++) {
    const s = process.hrtime.bigint();
    await c.get(`${c.name}:${(i * 7919) % N}`);
    lat.push(Number(process.hrtime.bigint() - s) / 1000);
  }
  return { get_p50_us: pct(lat, 0.5), get_p99_us: pct(lat, 0.99), set_mb_s: (N * 4096) / secs / 1e6 };
}

const cluster = await RedisCluster.start();
try {
  const seeds = cluster.ports.map((port) => ({ host: '127.0.0.1', port }));
  const io = new Cluster(seeds, { enableAutoPipelining: true });
  const nr = createCluster({ rootNodes: cluster.ports.map((p) => ({ url: `redis://127.0.0.1:${p}` })) });
  await nr.connect();
  const results: Record<string, unknown> = {};
  for (let round = 0; round < 2; round++) { // alternate, keep the second round (warm)
    results.ioredis = await measure({ name: 'io', set: (k, v) => io.set(k, v), get: (k) => io.getBuffer(k), close: async () => {} });
    results.node_redis = await measure({ name: 'nr', set: (k, v) => nr.set(k, v), get: (k) => nr.get(k), close: async () => {} });
  }
  io.disconnect();
  await nr.close();
  console.log(JSON.stringify(results, null, 2));
  const out = { machine: describeMachine(['redis-server']), results };
  writeFileSync('bench/results/redis-clients.json', JSON.stringify(out, null, 2) + '\n');
} finally {
  await cluster.stop();
}
