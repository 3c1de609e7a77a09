/** --codec zstd screens out pages lz4 cannot shrink before trying zstd, and only those. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseCodec } from '../../src/engine/codec/codec.js';
import { fillRandom, makePage } from '../helpers/pages.js';

test('zstd skips pages lz4 cannot shrink, and still compresses pages that only look random in places', () => {
  const z = parseCodec('zstd:3');
  const dst = Buffer.alloc(8192);
  const out = Buffer.alloc(4096);
  const random = makePage('random', 9);
  assert.equal(z.compress(random, 4096, dst, 3584), 0, 'a random page is stored raw');
  // 3/4 random bytes, then text: lz4 shrinks it a little, so zstd is tried and keeps it if it fits the cap
  const mixed = makePage('text', 3);
  fillRandom(mixed.subarray(0, 2560), 77);
  const n = z.compress(mixed, 4096, dst, 4095);
  assert.ok(n > 0 && n < 4096, `a page with a compressible part is compressed (${n})`);
  assert.ok(z.decompress(dst, n, out, 4096) && out.equals(mixed));
  // bytes spread over all 256 values but repeating: looks random to the sampler, lz4 shrinks it
  const cyclic = Buffer.alloc(4096);
  for (let i = 0; i < 4096; i++) cyclic[i] = (i * 37) & 255;
  const m = z.compress(cyclic, 4096, dst, 3584);
  assert.ok(m > 0, 'a page with every byte value that repeats is compressed');
  assert.ok(z.decompress(dst, m, out, 4096) && out.equals(cyclic));
});
