/** serve's cold-tier settings: flags, environment, defaults, and the combinations refused. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { resolveServeConfig } from '../../src/frontends/cli/commands/serve.js';

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
