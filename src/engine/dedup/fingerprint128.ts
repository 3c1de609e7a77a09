/**
 * 128-bit page fingerprints: XXH3-128 from libxxhash, for callers that cannot confirm a match
 * by comparing bytes (`zdedup analyze` keeps no page contents, only fingerprints). The store
 * itself uses the 64-bit fingerprint (fingerprint.ts) and always byte-compares.
 *
 * The result is returned through `a, b, c, d` (four u32, little-endian order of the 128-bit
 * value: a = bits 0..31 of low64, b = bits 32..63, c, d = high64), valid until the next call.
 *
 * ABI note: XXH128_hash_t is { uint64 low64, high64 } returned by value. We declare it to koffi
 * as four uint32 fields: the same 16-byte, 8-aligned, all-integer aggregate, so x86-64 SysV and
 * AArch64 return it in the same two registers, and koffi hands us plain numbers instead of two
 * BigInts per call (no BigInt allocation per page).
 */
import koffi from 'koffi';
import { ZdedupError } from '../../errors.js';

type Hash128Fn = (p: Uint8Array, len: number) => { a: number; b: number; c: number; d: number };

let xxh128: Hash128Fn | undefined;

function load(): Hash128Fn {
  if (xxh128) return xxh128;
  let lib: ReturnType<typeof koffi.load>;
  try {
    lib = koffi.load('libxxhash.so.0');
  } catch (e) {
    throw new ZdedupError('ERR_NATIVE_LIBRARY', 'cannot load libxxhash.so.0: install the Debian package libxxhash0 (apt-get install libxxhash0)', { cause: e });
  }
  koffi.struct('zdedup_xxh128_u32x4', { a: 'uint32_t', b: 'uint32_t', c: 'uint32_t', d: 'uint32_t' });
  xxh128 = lib.func('zdedup_xxh128_u32x4 XXH3_128bits(const uint8_t *p, size_t len)') as Hash128Fn;
  return xxh128;
}

export class Fingerprinter128 {
  a = 0;
  b = 0;
  c = 0;
  d = 0;
  private readonly fn: Hash128Fn = load();
  /** Hashes page[0, n) into this.a..d. */
  hash(page: Uint8Array, n: number): void {
    const r = this.fn(page, n);
    this.a = r.a; this.b = r.b; this.c = r.c; this.d = r.d;
  }
}
