/**
 * The HTTP server's own behaviour, in-process with a stub store and NBD server (so tier stats
 * and latency histograms can be fed before the core reports them): routes and their headers,
 * read-only methods, the loopback rules, /events framing and bounds, generic rendering of store
 * stats it has never heard of, and the percentile arithmetic of stat-model.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { describe, test } from 'node:test';
import { StatsHttpServer, isLoopbackHost } from '../../src/frontends/http/server.js';
import { latencyDelta, latencyQuantile, promStoreName, storeStatKind } from '../../src/frontends/http/stat-model.js';
import { Logger } from '../../src/frontends/log.js';

function stub(store: Record<string, number>, nbd: Record<string, unknown> = {}) {
  return {
    store: { stats: () => store },
    nbd: {
      exportInfo: () => [{ name: 'vm', description: 'd', size: 8192, read_only: false, pages: 2, data_pages: 1, zero_pages: 0, hole_pages: 1 }],
      counters: { toJSON: () => ({ connections_active: 0, bytes_written: 0, requests: { read: 0 }, errors: {}, ...nbd }) },
    },
  } as unknown as Pick<ConstructorParameters<typeof StatsHttpServer>[0], 'store' | 'nbd'>;
}

function logger(lines: string[] = []): Logger {
  return new Logger('info', { write: (s: string) => lines.push(s) });
}

async function withServer<T>(o: Partial<ConstructorParameters<typeof StatsHttpServer>[0]> & Pick<ConstructorParameters<typeof StatsHttpServer>[0], 'store' | 'nbd'>,
  fn: (base: string, port: number, s: StatsHttpServer) => Promise<T>): Promise<T> {
  const s = new StatsHttpServer({ host: '127.0.0.1', port: 0, log: logger(), version: '9.9.9', ...o });
  const port = await s.listen();
  try {
    return await fn(`http://127.0.0.1:${port}`, port, s);
  } finally {
    await s.close();
  }
}

/** A raw GET with a chosen Host header (fetch may not set Host). */
function getWithHost(port: number, path: string, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    http.get({ port, path, headers: { host } }, (res) => { res.resume(); res.on('end', () => resolve(res.statusCode!)); }).on('error', reject);
  });
}

describe('HTTP server', () => {
  test('routes: dashboard and assets with a strict CSP, /stats unchanged, 404 and 405', async () => {
    await withServer(stub({ stored_pages: 3, effective_ratio: 2 }), async (base) => {
      const page = await fetch(`${base}/`);
      assert.equal(page.status, 200);
      assert.match(page.headers.get('content-type')!, /^text\/html/);
      assert.match(page.headers.get('content-security-policy')!, /default-src 'self'/);
      const html = await page.text();
      for (const asset of html.matchAll(/(?:src|href)="(\/assets\/[^"]+)"/g)) {
        const r = await fetch(`${base}${asset[1]}`);
        assert.equal(r.status, 200, asset[1]);
        assert.match(r.headers.get('content-type')!, /^text\/(javascript|css)/, asset[1]);
        assert.ok((await r.text()).length > 100, `${asset[1]} has content`);
      }
      assert.doesNotMatch(html, /https?:\/\//, 'the page names no other origin');
      const model = await (await fetch(`${base}/assets/stat-model.js`)).text();
      assert.doesNotMatch(model, /^import /m, 'stat-model.js imports nothing (the browser loads it alone)');
      assert.doesNotMatch(model, /sourceMappingURL/);

      const doc = await (await fetch(`${base}/stats`)).json() as Record<string, unknown>;
      assert.deepEqual(Object.keys(doc), ['version', 'pid', 'uptime_seconds', 'store', 'exports', 'nbd', 'process']);
      assert.deepEqual(doc.store, { stored_pages: 3, effective_ratio: 2 });
      assert.equal((await fetch(`${base}/nope`)).status, 404);
      assert.equal((await fetch(`${base}/assets/nope.js`)).status, 404);
      const post = await fetch(`${base}/stats`, { method: 'POST', body: 'x' });
      assert.equal(post.status, 405);
      assert.equal(post.headers.get('allow'), 'GET, HEAD');
    });
  });

  test('loopback: a foreign Host header is refused; a non-loopback address needs insecure', async () => {
    await withServer(stub({}), async (_base, port) => {
      assert.equal(await getWithHost(port, '/stats', 'attacker.example'), 403);
      assert.equal(await getWithHost(port, '/', 'attacker.example:80'), 403);
      assert.equal(await getWithHost(port, '/stats', `127.0.0.1:${port}`), 200);
      assert.equal(await getWithHost(port, '/stats', `localhost:${port}`), 200);
      assert.equal(await getWithHost(port, '/stats', `[::1]:${port}`), 200);
    });
    const s = new StatsHttpServer({ host: '0.0.0.0', port: 0, log: logger(), version: 'x', ...stub({}) });
    await assert.rejects(s.listen(), (e: Error & { code?: string }) => e.code === 'ERR_INVALID_ARGUMENT' && /--insecure/.test(e.message));
    await s.close();
    const lines: string[] = [];
    const open = new StatsHttpServer({ host: '0.0.0.0', port: 0, log: logger(lines), version: 'x', insecure: true, ...stub({}) });
    const port = await open.listen();
    try {
      assert.equal(await getWithHost(port, '/stats', 'stats.example.net'), 200, 'with insecure any Host is served');
      assert.ok(lines.some((l) => /beyond loopback/.test(l)), 'the choice is logged');
    } finally {
      await open.close();
    }
    for (const h of ['127.0.0.1', '127.1.2.3', '::1', '[::1]', 'localhost']) assert.ok(isLoopbackHost(h), h);
    for (const h of ['0.0.0.0', '::', '10.0.0.1', '192.168.1.1', 'example.com']) assert.ok(!isLoopbackHost(h), h);
  });

  test('/events: a frame at once, then one per interval; subscribers are capped; the timer stops when they leave', async () => {
    let calls = 0;
    const src = stub({ stored_pages: 1 });
    const counted = { ...src, store: { stats: () => { calls++; return { stored_pages: calls }; } } };
    await withServer({ ...counted, eventIntervalMs: 20, maxEventClients: 2 } as never, async (base, _port, s) => {
      const a = new AbortController();
      const res = await fetch(`${base}/events`, { signal: a.signal });
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type')!, /^text\/event-stream/);
      const reader = res.body!.getReader();
      let text = '';
      const frames: { stored: number; time: number }[] = [];
      while (frames.length < 3) {
        const { value } = await reader.read();
        text += new TextDecoder().decode(value);
        let i;
        while ((i = text.indexOf('\n\n')) >= 0) {
          const block = text.slice(0, i);
          text = text.slice(i + 2);
          const data = /^data: (.*)$/m.exec(block)?.[1];
          if (data === undefined) { assert.match(block, /^retry: \d+$/); continue; }
          const doc = JSON.parse(data) as { store: { stored_pages: number }; time_ms: number; exports: unknown[] };
          assert.equal(doc.exports.length, 1, 'a frame is the whole /stats document');
          frames.push({ stored: doc.store.stored_pages, time: doc.time_ms });
        }
      }
      assert.ok(frames[1]!.stored > frames[0]!.stored && frames[2]!.stored > frames[1]!.stored, 'each frame is a fresh snapshot');
      const b = new AbortController();
      const second = await fetch(`${base}/events`, { signal: b.signal });
      const third = await fetch(`${base}/events`);
      assert.equal(third.status, 503, 'a third subscriber is refused');
      assert.equal(s.eventStats().subscribers, 2);
      a.abort();
      b.abort();
      await second.body?.cancel().catch(() => {});
      for (let i = 0; i < 100 && s.eventStats().subscribers > 0; i++) await new Promise((r) => setTimeout(r, 10));
      assert.equal(s.eventStats().subscribers, 0);
      const after = calls;
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(calls, after, 'no snapshots are taken while nobody watches');
    });
  });

  test('store stats it has never heard of are rendered generically; tier counters get _total', async () => {
    const store = { stored_pages: 5, written_back_pages: 7, disk_bytes: 4096, backing_size: 1 << 20, cold_tier_widgets: 3, pool_total_size: 1 << 20 };
    const lat = { buckets: [0.001, 0.01], counts: [3, 1, 0], sum_seconds: 0.012, count: 4 };
    await withServer(stub(store, { latency: { read_tier: lat } }), async (base) => {
      const m = await (await fetch(`${base}/metrics`)).text();
      assert.match(m, /^# TYPE zdedup_written_back_pages_total counter$/m);
      assert.match(m, /^zdedup_written_back_pages_total 7$/m);
      assert.match(m, /^# TYPE zdedup_disk_bytes gauge$/m);
      assert.match(m, /^zdedup_backing_size_bytes 1048576$/m);
      assert.match(m, /^zdedup_pool_total_size_bytes 1048576$/m);
      assert.match(m, /^# TYPE zdedup_cold_tier_widgets gauge$/m);
      assert.match(m, /^# HELP zdedup_cold_tier_widgets PageStore stat cold_tier_widgets$/m);
      assert.match(m, /^zdedup_nbd_request_duration_seconds_bucket\{kind="read_tier",le="0.001"\} 3$/m);
      assert.match(m, /^zdedup_nbd_request_duration_seconds_bucket\{kind="read_tier",le="0.01"\} 4$/m);
      assert.match(m, /^zdedup_nbd_request_duration_seconds_bucket\{kind="read_tier",le="\+Inf"\} 4$/m);
      assert.match(m, /^zdedup_nbd_request_duration_seconds_count\{kind="read_tier"\} 4$/m);
      assert.doesNotMatch(m, /^zdedup_written_back_pages /m, 'a counter is not also a gauge');
    });
  });

  test('stat-model: kinds, names and histogram percentiles', () => {
    assert.equal(storeStatKind('dedup_hits'), 'counter');
    assert.equal(storeStatKind('disk_loads'), 'counter');
    assert.equal(storeStatKind('stored_pages'), 'gauge');
    assert.equal(promStoreName('store_calls'), 'zdedup_store_calls_total');
    assert.equal(promStoreName('pool_total_size'), 'zdedup_pool_total_size_bytes');
    assert.equal(promStoreName('metadata_bytes'), 'zdedup_metadata_bytes');
    assert.equal(promStoreName('dedup_ratio'), 'zdedup_dedup_ratio');
    // 100 requests: 50 in (0, 1 ms], 40 in (1, 2 ms], 10 slower than 4 ms.
    const h = { buckets: [0.001, 0.002, 0.004], counts: [50, 40, 0, 10], sum_seconds: 0.5, count: 100 };
    assert.equal(latencyQuantile(h, 0.5), 0.001);
    assert.ok(Math.abs(latencyQuantile(h, 0.7)! - 0.0015) < 1e-12, 'interpolated inside its bucket');
    assert.equal(latencyQuantile(h, 0.99), 0.004, 'the +Inf bucket reports the last finite bound');
    assert.equal(latencyQuantile({ ...h, counts: [0, 0, 0, 0], count: 0 }, 0.5), null);
    // Only what happened since `prev` counts.
    const prev = { buckets: h.buckets, counts: [50, 0, 0, 0], sum_seconds: 0.01, count: 50 };
    const d = latencyDelta(h, prev);
    assert.equal(d.count, 50);
    assert.ok(latencyQuantile(d, 0.5)! > 0.001, 'the newer, slower requests dominate the window');
    // A histogram whose counts lack the +Inf entry: it is derived from count.
    assert.equal(latencyQuantile({ buckets: [0.001], counts: [1], sum_seconds: 1, count: 3 }, 0.9), 0.001);
  });
});
