/**
 * Page fingerprints: 64-bit XXH3 (libxxhash). A fingerprint is only a hint; the store always
 * confirms a match by comparing bytes before sharing an object (VDO and KSM do the same).
 *
 * To avoid an object per call the hash is returned through `fp.lo` / `fp.hi` (two u32 halves),
 * valid until the next call.
 */
import { nativeXxhash } from '../codec/native.js';

/** A 64-bit hash of page[0, n). A number is accepted too (koffi returns one when the value is below 2^53). */
export type FingerprintFn = (page: Uint8Array, n: number) => bigint | number;

/** The default fingerprint: XXH3-64. */
export function xxh3Fingerprint(): FingerprintFn {
  const x = nativeXxhash();
  return (page, n) => x.xxh3(page, n);
}

export class Fingerprinter {
  lo = 0;
  hi = 0;
  constructor(private readonly fn: FingerprintFn = xxh3Fingerprint()) {}
  /** Hashes page[0, n) into this.lo / this.hi. */
  hash(page: Uint8Array, n: number): void {
    const h = this.fn(page, n);
    if (typeof h === 'number') {
      this.lo = h >>> 0;
      this.hi = Math.floor(h / 4294967296) >>> 0;
    } else {
      this.lo = Number(h & 0xffffffffn);
      this.hi = Number((h >> 32n) & 0xffffffffn);
    }
  }
}
