/** serve's tiering settings: flags, environment, percentages, and the combinations refused. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import os from 'node:os';
import { parsePoolLimit, resolveServeConfig } from '../../src/frontends/cli/commands/serve.js';

test('--max-pool takes a size or a percentage of RAM', () => {
  assert.equal(parsePoolLimit('64M'), 64 << 20);
  assert.equal(parsePoolLimit('25%'), Math.floor(os.totalmem() / 4));
  assert.equal(parsePoolLimit('12.5%'), Math.floor(os.totalmem() * 0.125));
  assert.throws(() => parsePoolLimit('0%'), /percentage/);
  assert.throws(() => parsePoolLimit('150%'), /percentage/);
  assert.throws(() => parsePoolLimit('lots'), /invalid size/);
});

test('tier flags and their environment names resolve, flags first', () => {
  const c = resolveServeConfig({ maxPool: '32M', backing: '/tmp/b.img', backingSize: '1G', segmentSize: '1M', writethrough: true, acceptThreshold: '80' }, {});
  assert.equal(c.maxPool, 32 << 20);
  assert.equal(c.backing, '/tmp/b.img');
  assert.equal(c.backingSize, 1 << 30);
  assert.equal(c.segmentSize, 1 << 20);
  assert.equal(c.writethrough, true);
  assert.equal(c.acceptThreshold, 80);
  const e = resolveServeConfig({ backing: '/flag.img' }, {
    ZDEDUP_MAX_POOL: '10%', ZDEDUP_BACKING: '/env.img', ZDEDUP_BACKING_SIZE: '2G', ZDEDUP_WRITETHROUGH: 'yes', ZDEDUP_ACCEPT_THRESHOLD: '75',
  });
  assert.equal(e.backing, '/flag.img');
  assert.equal(e.maxPool, Math.floor(os.totalmem() / 10));
  assert.equal(e.backingSize, 2 * 2 ** 30);
  assert.equal(e.writethrough, true);
  assert.equal(e.acceptThreshold, 75);
  const d = resolveServeConfig({}, {});
  assert.equal(d.backing, null);
  assert.equal(d.acceptThreshold, 90);
  assert.equal(d.writethrough, false);
});

test('tier flags that make no sense alone are refused with a clear message', () => {
  assert.throws(() => resolveServeConfig({ backing: '/tmp/b.img' }, {}), /--backing needs --max-pool/);
  assert.throws(() => resolveServeConfig({ backingSize: '1G' }, {}), /need --backing/);
  assert.throws(() => resolveServeConfig({ writethrough: true }, {}), /need --backing/);
  assert.throws(() => resolveServeConfig({ maxPool: '1G', acceptThreshold: '0' }, {}), /accept-threshold/);
  assert.throws(() => resolveServeConfig({ maxPool: '1G', acceptThreshold: 'x' }, {}), /accept-threshold/);
});

test('--export takes :ro and :max-pool=SIZE in any order after the size; names may hold colons', async () => {
  const { parseExportArg } = await import('../../src/frontends/cli/commands/serve.js');
  assert.deepEqual({ ...parseExportArg('a:64M:max-pool=2M', false), description: '' }, { name: 'a', size: 64 << 20, readOnly: false, maxPool: 2 << 20, description: '' });
  const r = parseExportArg('x:y:1G:max-pool=512K:ro', false);
  assert.equal(r.name, 'x:y'); assert.equal(r.size, 1 << 30); assert.equal(r.maxPool, 512 << 10); assert.equal(r.readOnly, true);
  assert.equal(parseExportArg('b:8G', false).maxPool, undefined);
  assert.throws(() => parseExportArg('a:1G:max-pool=0', false), /more than 0/);
  assert.throws(() => parseExportArg('a:1G:max-pool=1M:max-pool=2M', false), /twice/);
  assert.throws(() => parseExportArg('a:1G:max-pool=lots', false), /invalid size/);
});
