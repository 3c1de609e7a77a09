/**
 * Same-filled pages: a page that is one 8-byte word repeated (the zero page is the common case).
 * Such a page is kept as the word alone (zswap's "same_filled_pages", zram's "same_pages").
 *
 * Detection is one memcmp of the page against itself shifted by 8 bytes: page[i] == page[i+8]
 * for all i holds exactly when the page is periodic with period 8, i.e. one word repeated. It
 * stops at the first difference, so ordinary pages cost a few bytes of comparison, and it works
 * at any alignment (NBD payloads land at arbitrary offsets in socket chunks).
 */

const compare = Buffer.prototype.compare;

/** True when page[0, n) is one 8-byte word repeated. n must be a multiple of 8. */
export function isSameFilled(page: Uint8Array, n: number): boolean {
  return compare.call(page as Buffer, page, 8, n, 0, n - 8) === 0;
}

/** Low and high 32 bits (little-endian) of the page's first word. */
export function wordLo(page: Uint8Array): number {
  return (page[0]! | (page[1]! << 8) | (page[2]! << 16) | (page[3]! << 24)) >>> 0;
}
export function wordHi(page: Uint8Array): number {
  return (page[4]! | (page[5]! << 8) | (page[6]! << 16) | (page[7]! << 24)) >>> 0;
}

/** Fills dst[0, n) with the word (lo, hi). n must be a multiple of 8. */
export function fillWord(dst: Uint8Array, n: number, lo: number, hi: number): void {
  if (lo === 0 && hi === 0) { dst.fill(0, 0, n); return; }
  if (lo === hi && (lo & 0xff) * 0x01010101 === lo) { dst.fill(lo & 0xff, 0, n); return; }
  dst[0] = lo; dst[1] = lo >>> 8; dst[2] = lo >>> 16; dst[3] = lo >>> 24;
  dst[4] = hi; dst[5] = hi >>> 8; dst[6] = hi >>> 16; dst[7] = hi >>> 24;
  // Double the filled prefix each time: log2(n/8) copyWithin calls (memmove).
  for (let have = 8; have < n; have *= 2) dst.copyWithin(have, 0, Math.min(have, n - have));
}
