/** serve's cold-tier and compression-thread settings: flags, environment, defaults, and the combinations refused. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { availableParallelism } from 'node:os';
import { PageStore } from '../../src/core/page-store.js';
import { defaultCompressThreads, resolveServeConfig } from '../../src/frontends/cli/commands/serve.js';

test('cold flags and their environment names resolve, with the documented defaults', () => {
  assert.equal(resolveServeConfig({}, {}).cold, null, 'off by default');
  assert.deepEqual(resolveServeConfig({ coldCodec: 'zstd:9' }, {}).cold, { codec: 'zstd:9', afterSeconds: 60, groupPages: 8 });
  assert.deepEqual(resolveServeConfig({ coldCodec: 'zstd', coldAfter: '0', coldGroup: '16' }, {}).cold, { codec: 'zstd:3', afterSeconds: 0, groupPages: 16 });
  assert.deepEqual(resolveServeConfig({}, { ZDEDUP_COLD_CODEC: 'zstd:5', ZDEDUP_COLD_AFTER: '2.5', ZDEDUP_COLD_GROUP: '4' }).cold,
    { codec: 'zstd:5', afterSeconds: 2.5, groupPages: 4 });
  assert.equal(resolveServeConfig({ coldCodec: 'off' }, { ZDEDUP_COLD_CODEC: 'zstd:5' }).cold, null, 'a flag beats the environment');
});

test('cold flags that make no sense are refused with a clear message', () => {
  assert.throws(() => resolveServeConfig({ coldAfter: '10' }, {}), /need --cold-codec/);
  assert.throws(() => resolveServeConfig({ coldGroup: '4' }, {}), /need --cold-codec/);
  assert.throws(() => resolveServeConfig({ coldCodec: 'lz4' }, {}), /cold codec must be zstd/);
  assert.throws(() => resolveServeConfig({ coldCodec: 'zstd:9', coldGroup: '0' }, {}), /cold-group/);
  assert.throws(() => resolveServeConfig({ coldCodec: 'zstd:9', coldGroup: '2.5' }, {}), /cold-group/);
  assert.throws(() => resolveServeConfig({ coldCodec: 'zstd:9', coldAfter: 'soon' }, {}), /cold-after/);
  assert.throws(() => resolveServeConfig({ coldCodec: 'zstd:9', coldAfter: '-1' }, {}), /cold-after/);
});

test('--compress-threads: flag, environment, the CPU-based default, and bad values refused', () => {
  const dflt = resolveServeConfig({}, {}).compressThreads;
  assert.equal(dflt, defaultCompressThreads());
  assert.equal(dflt, Math.min(1, Math.max(0, availableParallelism() - 1)), 'CPUs minus one, at most 1');
  assert.equal(resolveServeConfig({ compressThreads: '0' }, {}).compressThreads, 0);
  assert.equal(resolveServeConfig({}, { ZDEDUP_COMPRESS_THREADS: '3' }).compressThreads, 3);
  assert.equal(resolveServeConfig({ compressThreads: '2' }, { ZDEDUP_COMPRESS_THREADS: '3' }).compressThreads, 2, 'a flag beats the environment');
  for (const bad of ['-1', '17', '1.5', 'many', ' ']) {
    assert.throws(() => resolveServeConfig({ compressThreads: bad }, {}), /--compress-threads must be a whole number from 0 to 16/, bad);
  }
});

test('a store with compression workers serves what was stored, and stops its workers on close', async () => {
  const store = new PageStore({ codec: 'zstd', compressThreads: 1 });
  const area = store.createArea('a', 64);
  const pages = Array.from({ length: 64 }, (_, i) => Buffer.alloc(4096, `page ${i % 40} of text that compresses `));
  for (let i = 0; i < 64; i++) assert.equal(store.store(area, i, pages[i]!), 'stored');
  const into = Buffer.alloc(4096);
  for (let i = 0; i < 64; i++) { assert.equal(store.load(area, i, into), 'hit'); assert.ok(into.equals(pages[i]!)); }
  store.settleStage();
  const s = store.stats();
  assert.equal(s.stage_pages, 0);
  assert.ok(s.stage_bytes > 0);
  assert.equal(s.unique_objects, 40);
  assert.ok(s.compressed_bytes < 40 * 4096 / 4, 'installed compressed');
  store.checkInvariants();
  const worker = store.compressWorkerForTest(0)!;
  const exited = new Promise((r) => worker.once('exit', r));
  await store.close();
  await exited;
});
