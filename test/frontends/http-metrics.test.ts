/**
 * /metrics by Prometheus conventions, read by real parsers: parse-prometheus-text-format (npm) on
 * every scrape, and the official Python client's parser (Debian python3-prometheus-client) for
 * the labelled histograms when it is installed. An in-process server takes NBD writes, reads,
 * trims and refused requests between scrapes: every counter family keeps its TYPE, names and help,
 * and no counter ever goes down.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { PageStore } from '../../src/core/page-store.js';
import { StatsHttpServer } from '../../src/frontends/http/server.js';
import { STORE_COUNTERS, STORE_HELP, promStoreName } from '../../src/frontends/http/stat-model.js';
import { Logger } from '../../src/frontends/log.js';
import { NbdServer } from '../../src/frontends/nbd/server.js';
import { REPO } from '../integration/nbd/harness.js';
import { RawClient } from '../integration/nbd/raw-client.js';

interface Family { name: string; help: string; type: string; metrics: { value?: string; labels?: Record<string, string> }[] }
const parse = createRequire(import.meta.url)('parse-prometheus-text-format') as (text: string) => Family[];

const PS = 4096;
const PYTHON = '/usr/bin/python3';
const pythonParser = spawnSync(PYTHON, ['-c', 'import prometheus_client.parser']).status === 0;

/** Every sample of a scrape as "name{labels}" -> value (labels sorted), from the npm parser. */
function samples(families: Family[]): Map<string, { type: string; value: number }> {
  const out = new Map<string, { type: string; value: number }>();
  for (const f of families) {
    if (f.type === 'HISTOGRAM' || f.type === 'SUMMARY') continue; // the npm parser folds these; see the Python check
    for (const m of f.metrics) {
      const labels = Object.entries(m.labels ?? {}).sort().map(([k, v]) => `${k}=${v}`).join(',');
      out.set(`${f.name}{${labels}}`, { type: f.type, value: Number(m.value) });
    }
  }
  return out;
}

describe('/metrics', () => {
  const log = new Logger('error', { write: () => {} });
  let dir: string;
  let store: PageStore;
  let nbd: NbdServer;
  let http: StatsHttpServer;
  let sock: string;
  let base: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'zdedup-metrics-'));
    sock = join(dir, 's.sock');
    store = new PageStore({ pageSize: PS, codec: 'lz4', maxPoolBytes: 1024 * 1024 });
    nbd = new NbdServer({ store, pageSize: PS, log, exports: [{ name: '', size: 32 * 1024 * 1024 }, { name: 'ro', size: 16 * PS, readOnly: true }] });
    await nbd.listenUnix(sock);
    http = new StatsHttpServer({ host: '127.0.0.1', port: 0, store, nbd, log, version: 'test' });
    base = `http://127.0.0.1:${await http.listen()}`;
  });
  after(async () => {
    await http.close();
    await nbd.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const scrape = async (): Promise<string> => {
    const res = await fetch(`${base}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    return res.text();
  };

  test('counters only increase across a run of writes, reads, trims, refusals; names follow the conventions', async () => {
    const c = await RawClient.connect(sock);
    await c.handshake('');
    let cookie = 1n;
    const text = Buffer.from('metrics text page '.repeat(300).slice(0, PS));
    const rounds: Map<string, { type: string; value: number }>[] = [];
    for (let round = 0; round < 6; round++) {
      const families = parse(await scrape());
      rounds.push(samples(families));
      // HELP on every family; counters end in _total; sizes in bytes end in _bytes.
      for (const f of families) {
        assert.ok(f.help.length > 0, `${f.name} has help`);
        if (f.type === 'COUNTER') assert.match(f.name, /_total$/, `counter ${f.name} ends in _total`);
        if (/_size$/.test(f.name)) assert.fail(`${f.name}: a size must be named _bytes`);
      }
      // Traffic for the next scrape: same-filled, duplicate and random pages, reads, a trim, and
      // writes the pool limit refuses (ENOSPC) once random data fills it (6 x 50 random pages > 1 MiB).
      for (let i = 0; i < 100; i++) {
        const page = i % 4 === 0 ? Buffer.alloc(PS, round) : i % 4 === 1 ? text : randomBytes(PS);
        c.request(1, 0, cookie++, BigInt((round * 128 + i) * PS), PS, page);
        await c.simpleReply();
      }
      c.request(0, 0, cookie++, 0n, 8 * PS);
      await c.simpleReply(8 * PS);
      c.request(4, 0, cookie++, BigInt(round * 128 * PS), 4 * PS);
      await c.simpleReply();
    }
    c.destroy();
    rounds.push(samples(parse(await scrape())));

    const first = rounds[0]!;
    const last = rounds[rounds.length - 1]!;
    let counters = 0;
    for (let r = 1; r < rounds.length; r++) {
      for (const [k, v] of rounds[r]!) {
        if (v.type !== 'COUNTER') continue;
        counters++;
        const prev = rounds[r - 1]!.get(k);
        if (prev !== undefined) assert.ok(v.value >= prev.value, `${k} went down: ${prev.value} -> ${v.value}`);
      }
    }
    assert.ok(counters > 0);
    // Every store counter is a counter named <stat>_total, and the traffic moved the obvious ones.
    for (const stat of STORE_COUNTERS) {
      const s = last.get(`${promStoreName(stat)}{}`);
      if (s === undefined) continue; // a tier stat this store does not report
      assert.equal(s.type, 'COUNTER', stat);
    }
    for (const k of ['zdedup_store_calls_total{}', 'zdedup_dedup_hits_total{}', 'zdedup_load_calls_total{}', 'zdedup_invalidated_pages_total{}',
      'zdedup_nbd_bytes_written_total{}', 'zdedup_nbd_requests_total{command=write}']) {
      assert.ok(last.get(k)!.value > first.get(k)!.value, `${k} grew`);
    }
    assert.ok(last.get('zdedup_pool_limit_hit_total{}')!.value > 0, 'the pool limit refused some writes');
    assert.ok((last.get('zdedup_nbd_request_errors_total{errno=ENOSPC}')?.value ?? 0) > 0, 'ENOSPC counted by errno');
    // Gauges: ratios, sizes in _bytes, pages, per-export sizes.
    assert.equal(last.get('zdedup_pool_total_size_bytes{}')?.type, 'GAUGE');
    assert.equal(last.get('zdedup_page_size_bytes{}')?.value, PS);
    assert.equal(last.get('zdedup_effective_ratio{}')?.type, 'GAUGE');
    assert.equal(last.get('zdedup_stored_pages{}')?.type, 'GAUGE');
    assert.equal(last.get('zdedup_nbd_connections_active{}')?.type, 'GAUGE');
    assert.equal(last.get('zdedup_export_size_bytes{export=ro}')?.value, 16 * PS);
    assert.equal(last.get('zdedup_export_pages{export=ro,kind=hole}')?.value, 16);
    // And the values are the /stats values of the same moment (nothing moves now).
    const doc = await (await fetch(`${base}/stats`)).json() as { store: Record<string, number> };
    const now = samples(parse(await scrape()));
    assert.equal(now.get('zdedup_stored_pages{}')?.value, doc.store.stored_pages);
    assert.equal(now.get('zdedup_store_calls_total{}')?.value, doc.store.store_calls);
  });

  test('latency histograms per kind, read by the official Python client parser', { skip: pythonParser ? false : `needs ${PYTHON} with prometheus_client (apt-get install python3-prometheus-client)` }, async () => {
    const doc = await (await fetch(`${base}/stats`)).json() as { nbd: { latency?: Record<string, { count: number; sum_seconds: number }> } };
    const script = `
import sys, json, math
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    # NaN is valid in the text format (prom-client's event-loop gauges before their first sample), not in JSON.
    out[f.name] = {"type": f.type, "samples": [[s.name, s.labels, s.value if math.isfinite(s.value) else str(s.value)] for s in f.samples]}
print(json.dumps(out))
`;
    const r = spawnSync(PYTHON, ['-c', script], { input: await scrape(), encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const fams = JSON.parse(r.stdout) as Record<string, { type: string; samples: [string, Record<string, string>, number][] }>;
    assert.equal(fams.zdedup_store_calls?.type, 'counter', 'the official parser sees zdedup_store_calls_total as a counter');
    const h = fams.zdedup_nbd_request_duration_seconds;
    assert.equal(h?.type, 'histogram');
    if (doc.nbd.latency === undefined) return; // an NBD server without latency: an empty histogram family is valid
    for (const [kind, want] of Object.entries(doc.nbd.latency)) {
      const buckets = h.samples.filter(([n, l]) => n.endsWith('_bucket') && l.kind === kind);
      const count = h.samples.find(([n, l]) => n.endsWith('_count') && l.kind === kind)?.[2];
      const sum = h.samples.find(([n, l]) => n.endsWith('_sum') && l.kind === kind)?.[2];
      assert.ok(buckets.length > 1, `${kind} has buckets`);
      assert.equal(buckets[buckets.length - 1]![1].le, '+Inf');
      for (let i = 1; i < buckets.length; i++) {
        const le = (j: number): number => (buckets[j]![1].le === '+Inf' ? Infinity : Number(buckets[j]![1].le));
        assert.ok(le(i) > le(i - 1), `${kind}: le ascending`);
        assert.ok(buckets[i]![2] >= buckets[i - 1]![2], `${kind}: buckets cumulative`);
      }
      assert.equal(buckets[buckets.length - 1]![2], count, `${kind}: +Inf = count`);
      assert.equal(count, want.count, `${kind}: count = /stats`);
      assert.ok(Math.abs(sum! - want.sum_seconds) < 1e-9, `${kind}: sum = /stats`);
    }
    assert.ok(doc.nbd.latency.write!.count > 0, 'the writes of the first test were timed');
  });

  test('every metric the Grafana dashboard queries is served (or is a tier stat this store does not report yet)', async () => {
    const board = JSON.parse(readFileSync(join(REPO, 'contrib/grafana/zdedup.json'), 'utf8')) as { panels: { title: string; targets: { expr: string }[] }[] };
    const served = new Set(parse(await scrape()).map((f) => f.name));
    const tierStats = new Set(Object.keys(STORE_HELP).map(promStoreName));
    const used = new Set<string>();
    for (const p of board.panels) {
      assert.ok(p.targets.length > 0, `panel ${p.title} has queries`);
      for (const t of p.targets) for (const m of t.expr.matchAll(/\bzdedup_[a-z0-9_]+/g)) used.add(m[0]);
    }
    assert.ok(used.size > 20);
    for (const name of used) {
      const family = name.replace(/_bucket$/, '');
      assert.ok(served.has(family) || tierStats.has(name), `${name} (Grafana) is neither served by /metrics nor a known store stat`);
    }
    for (const must of ['zdedup_store_calls_total', 'zdedup_nbd_request_duration_seconds_bucket', 'zdedup_written_back_pages_total', 'zdedup_pool_total_size_bytes']) {
      assert.ok(used.has(must), `the board shows ${must}`);
    }
  });
});
