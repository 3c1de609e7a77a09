/**
 * Cross-host dedup through `zdedup serve --remote` with a real NBD client (nbdcopy) and a real
 * 6-node Redis Cluster: two servers with the same domain and secret each receive the same
 * 256 MiB of pages (a RAM pool of 8 MiB each, so nearly everything goes to the cluster). The
 * cluster's used memory (masters) grows by one copy for the first and by at most 10% of it for
 * the second, which uploads nothing and reads every byte back. A third server with another secret
 * shares nothing. Also: `--remote` flags are checked with clear one-line errors.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hasTool, httpGet, run, runOk, startServer, ZDEDUP, type Server } from './nbd/harness.js';
import { MiB, PAGE, poll, storeStats } from './nbd/tier-helpers.js';
import { fillRandom } from '../helpers/pages.js';
import { RedisCluster, redisMissing } from '../helpers/redis-cluster.js';

const skip = redisMissing() || (!hasTool('nbdcopy') ? 'nbdcopy is not installed (apt-get install libnbd-bin); skipping' : false);
const SIZE = 256 * MiB;
let cluster: RedisCluster;
let dir: string;

before(async () => {
  if (skip) return;
  cluster = await RedisCluster.start();
  dir = mkdtempSync(join(tmpdir(), 'zdedup-remote-'));
  // 65536 distinct pages, half random and half zero (they compress to about half a page)
  const fd = openSync(join(dir, 'data.img'), 'w');
  const chunk = Buffer.alloc(MiB);
  for (let off = 0; off < SIZE; off += MiB) {
    chunk.fill(0);
    for (let p = 0; p < MiB / PAGE; p++) fillRandom(chunk.subarray(p * PAGE, p * PAGE + PAGE / 2), (off / PAGE) + p + 1);
    writeSync(fd, chunk);
  }
  closeSync(fd);
  writeFileSync(join(dir, 'a.key'), 'fleet-a-secret-0123456789abcdef\n');
  writeFileSync(join(dir, 'b.key'), 'fleet-b-secret-fedcba9876543210\n');
});
after(async () => {
  await cluster?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function serve(secret: string): Promise<Server> {
  return startServer(['--size', String(SIZE), '--max-pool', '8M', '--remote', cluster.url, '--remote-domain', 'fleet',
    '--remote-secret-file', join(dir, secret)]);
}

/** Waits until the server's writeback is done and every object in the remote tier is acknowledged. */
async function settled(s: Server): Promise<Record<string, number>> {
  let last = -1;
  const st = await poll(async () => {
    const x = await storeStats(s);
    const acked = x.remote_stores! + x.remote_dedup_hits!;
    const done = acked >= x.remote_objects! && x.pool_total_size! <= x.max_pool_bytes! && acked === last;
    last = acked;
    return done ? x : null;
  }, 600, 200);
  assert.ok(st !== null, 'the server settled');
  return st;
}

describe('zdedup serve --remote with nbdcopy on a real Redis Cluster', { skip }, () => {
  test('two servers with the same domain and secret store 256 MiB once; another secret shares nothing', { timeout: 600_000 }, async () => {
    const data = join(dir, 'data.img');
    const mem0 = cluster.usedMemory();
    const s1 = await serve('a.key');
    let st1: Record<string, number>;
    try {
      await runOk('nbdcopy', [data, s1.uri()]);
      st1 = await settled(s1);
    } finally {
      assert.equal((await s1.stop()).code, 0);
    }
    // The first server is gone: its objects stay for their lease (the second host renews them).
    const mem1 = cluster.usedMemory();
    const copy = mem1 - mem0;
    assert.ok(copy > 0.4 * SIZE, `one copy in the cluster: ${copy} bytes`);

    const s2 = await serve('a.key');
    try {
      await runOk('nbdcopy', [data, s2.uri()]);
      const st2 = await settled(s2);
      const mem2 = cluster.usedMemory();
      console.log(`# one copy ${(copy / MiB).toFixed(1)} MiB; second host adds ${((mem2 - mem1) / MiB).toFixed(1)} MiB; ` +
        `host1 stores ${st1.remote_stores} host2 stores ${st2.remote_stores} dedup hits ${st2.remote_dedup_hits}`);
      assert.ok(mem2 - mem1 <= 0.1 * copy, `second copy grew the cluster by ${mem2 - mem1} bytes, more than 10% of ${copy}`);
      assert.ok(st2.remote_dedup_hits! > 0.9 * st2.remote_objects!, 'the second host found its pages in the cluster');
      // It uploads only pages the first host never sent (those it still held in RAM when stopped).
      const neverSent = st1.unique_objects! - st1.remote_objects!;
      assert.ok(st2.remote_stores! <= neverSent, `the second host uploaded ${st2.remote_stores} values, the first kept only ${neverSent} in RAM`);
      // The counters under their names in /metrics and `zdedup stats`.
      const metrics = await httpGet(s2.http!, '/metrics');
      for (const m of ['zdedup_remote_dedup_hits_total', 'zdedup_remote_stores_total', 'zdedup_remote_loads_total', 'zdedup_remote_errors_total',
        'zdedup_remote_retries_total', 'zdedup_remote_objects', 'zdedup_remote_bytes', 'zdedup_remote_hit_latency_p99_us']) {
        assert.match(metrics, new RegExp(`^${m} \\d`, 'm'), `${m} in /metrics`);
      }
      const cli = await runOk(process.execPath, [ZDEDUP, 'stats', '--http', s2.http!, '--json']);
      assert.ok((JSON.parse(cli.stdout) as { store: Record<string, number> }).store.remote_dedup_hits! > 0, 'zdedup stats --json shows remote_dedup_hits');
      const text = await runOk(process.execPath, [ZDEDUP, 'stats', '--http', s2.http!]);
      assert.match(text.stdout, /^\s*remote_dedup_hits\s+[1-9]/m, 'zdedup stats shows the remote tier');
      // It reads every byte back, most of them stored by the first host.
      const back = join(dir, 'back.img');
      await runOk('nbdcopy', [s2.uri(), back]);
      assert.ok(readFileSync(back).equals(readFileSync(data)), 'the second server returns exactly the data');
      rmSync(back);
      assert.ok((await storeStats(s2)).remote_loads! > 0.8 * st2.remote_objects!);

      const s3 = await serve('b.key');
      try {
        await runOk('nbdcopy', [data, s3.uri()]);
        const st3 = await settled(s3);
        const mem3 = cluster.usedMemory();
        assert.equal(st3.remote_dedup_hits, 0, 'another secret finds nothing of domain a');
        assert.ok(mem3 - mem2 > 0.8 * copy, `another secret stores its own copy (${mem3 - mem2} bytes)`);
      } finally {
        assert.equal((await s3.stop()).code, 0);
      }
    } finally {
      assert.equal((await s2.stop()).code, 0);
    }
  });

  test('--remote flags: clear one-line errors, exit 2', async () => {
    const cases: [string[], RegExp][] = [
      [['--remote', cluster.url], /--remote needs --max-pool/],
      [['--max-pool', '16M', '--remote', cluster.url], /--remote needs --remote-secret-file/],
      [['--max-pool', '16M', '--remote', 'http://x:1', '--remote-secret-file', join(dir, 'a.key')], /--remote must look like redis:\/\//],
      [['--max-pool', '16M', '--remote', cluster.url, '--remote-secret-file', join(dir, 'a.key'), '--remote-domain', 'a b'], /--remote-domain must match/],
      [['--remote-domain', 'x'], /--remote-domain needs --remote/],
    ];
    const short = join(dir, 'short.key');
    writeFileSync(short, 'tooshort');
    cases.push([['--max-pool', '16M', '--remote', cluster.url, '--remote-secret-file', short], /needs at least 16/]);
    for (const [args, re] of cases) {
      const r = await run(process.execPath, [ZDEDUP, 'serve', '--socket', join(dir, 'x.sock'), '--http', 'off', ...args]);
      assert.equal(r.code, 2, `exit code for ${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, re);
    }
  });
});
