/**
 * Page codecs: lz4 (default), zstd at a level, none.
 *
 * A codec compresses one page into a caller-owned scratch buffer and decompresses into a
 * caller-owned page buffer: no allocation per page. `compress` is given a capacity; when the
 * output would not fit it returns 0, and the caller stores the page raw. The page store passes
 * capacity = 7/8 of the page, so "does not save at least 1/8" costs no extra work.
 *
 * Decompression is strict: the result must be exactly the expected length, otherwise -1.
 */
import { ZdedupError } from '../../errors.js';
import { nativeLz4, nativeZstd } from './native.js';

export type CodecName = 'lz4' | 'zstd' | 'none';

export interface Codec {
  /** Canonical spec, e.g. "lz4", "zstd:3", "none". */
  readonly spec: string;
  readonly name: CodecName;
  readonly level: number;
  /** Compresses src[0, n) into dst; returns the compressed length, or 0 if it needs more than cap bytes. */
  compress(src: Uint8Array, n: number, dst: Uint8Array, cap: number): number;
  /** Decompresses src[0, len) into dst, which must receive exactly `expect` bytes; returns true on success. */
  decompress(src: Uint8Array, len: number, dst: Uint8Array, expect: number): boolean;
}

export const DEFAULT_ZSTD_LEVEL = 3;

/**
 * Parses "lz4", "zstd", "zstd:N", "none". Throws ERR_BAD_CODEC for anything else, or for a zstd
 * level outside the library's range. Loads the native library (ERR_NATIVE_LIBRARY if missing).
 */
export function parseCodec(spec: string): Codec {
  const m = /^(lz4|zstd|none)(?::(-?\d+))?$/.exec(String(spec).trim().toLowerCase());
  if (!m) throw new ZdedupError('ERR_BAD_CODEC', `unknown codec "${spec}" (expected lz4, zstd, zstd:LEVEL or none)`);
  const name = m[1] as CodecName;
  if (m[2] !== undefined && name !== 'zstd') {
    throw new ZdedupError('ERR_BAD_CODEC', `codec "${name}" takes no level (only zstd:LEVEL does)`);
  }
  if (name === 'none') return noneCodec;
  if (name === 'lz4') return lz4Codec();
  const z = nativeZstd();
  const level = m[2] === undefined ? DEFAULT_ZSTD_LEVEL : Number(m[2]);
  if (!Number.isSafeInteger(level) || level < z.minLevel || level > z.maxLevel || level === 0) {
    throw new ZdedupError('ERR_BAD_CODEC', `zstd level ${m[2]} out of range (${z.minLevel}..-1 or 1..${z.maxLevel})`);
  }
  const l = nativeLz4();
  return {
    spec: `zstd:${level}`, name: 'zstd', level,
    compress(src, n, dst, cap) {
      if (hopeless(l, src, n, dst)) return 0;
      const r = z.compress(dst, cap, src, n, level);
      return r > 0 ? r : 0;
    },
    decompress(src, len, dst, expect) {
      return z.decompress(dst, expect, src, len) === expect;
    },
  };
}

/** Sampled bytes of a page that look random when this many of them are distinct (see hopeless). */
const SAMPLES = 128;
const RANDOM_DISTINCT = 88;
const seen = new Uint32Array(8); // a 256-bit set of byte values

/**
 * True when lz4 cannot shrink the page at all: zstd is then not tried (the page is stored raw).
 * Measured on 4 KiB pages here: zstd-3 spends 6-10 µs failing on a random page, a whole-page lz4
 * 1.5-2 µs (most of it FFI and hash-table setup, so a shorter lz4 probe is no cheaper). So a JS
 * screen first: 128 bytes sampled across the page; random bytes give ~101 distinct values,
 * text ~30-50, heaps of structs fewer. Only a page that looks random (>= 88 distinct) is tried
 * with lz4, and only one lz4 cannot shrink is skipped — a page that merely looks random is
 * still compressed. Cost: ~0.2 µs on a compressible page, ~2 µs instead of 6-10 on a random one.
 */
function hopeless(l: ReturnType<typeof nativeLz4>, src: Uint8Array, n: number, scratch: Uint8Array): boolean {
  if (!looksRandom(src, n)) return false;
  return l.compress(src, scratch, n, n - 1) === 0;
}

/**
 * The JS screen of hopeless(): 128 bytes sampled across src[0, n) hold >= 88 distinct values
 * (random bytes give ~101, text 30-50, heaps of structs fewer). ~0.2 µs. A page that looks random
 * may still compress: callers use it only to choose the cheaper way to find out.
 */
export function looksRandom(src: Uint8Array, n: number): boolean {
  seen.fill(0);
  let distinct = 0;
  const stride = (n / SAMPLES) | 0;
  for (let i = 7; i < n; i += stride) { // offset 7: not always the first (aligned) byte of a word
    const b = src[i]!;
    const m = 1 << (b & 31);
    const w = seen[b >>> 5]!;
    if ((w & m) === 0) { seen[b >>> 5] = w | m; distinct++; }
  }
  return distinct >= RANDOM_DISTINCT;
}

function lz4Codec(): Codec {
  const l = nativeLz4();
  return {
    spec: 'lz4', name: 'lz4', level: 0,
    compress(src, n, dst, cap) {
      return l.compress(src, dst, n, cap); // 0 when it does not fit
    },
    decompress(src, len, dst, expect) {
      return l.decompress(src, dst, len, expect) === expect;
    },
  };
}

const noneCodec: Codec = {
  spec: 'none', name: 'none', level: 0,
  compress() { return 0; }, // never smaller: every page is stored raw
  decompress() { return false; },
};
