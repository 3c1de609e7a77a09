/**
 * Memory for O_DIRECT I/O: buffers whose address is a multiple of 4096, and posix_fadvise for the
 * buffered fallback. Node gives no alignment guarantee, so a buffer is over-allocated by 4096 and
 * the aligned part is cut out, using its address from koffi (the FFI the codecs already use).
 */
import koffi from 'koffi';
import { ALIGN } from './format.js';

/** A Buffer of `size` bytes whose first byte is 4096-aligned (its own allocation, not Node's pool). */
export function alignedBuffer(size: number): Buffer {
  const raw = Buffer.allocUnsafeSlow(size + ALIGN);
  const addr = koffi.address(raw);
  const skip = Number((BigInt(ALIGN) - (addr % BigInt(ALIGN))) % BigInt(ALIGN));
  return raw.subarray(skip, skip + size);
}

let fadvise: ((fd: number, off: number, len: number, advice: number) => number) | null | undefined;
const POSIX_FADV_DONTNEED = 4;

/**
 * Asks the kernel to drop cached pages of [off, off+len) of fd (posix_fadvise DONTNEED). Used when
 * the medium refuses O_DIRECT, so cold data does not creep back into RAM through the page cache.
 * Dirty pages are not dropped: call it after the data is written. Best effort; returns false when
 * libc has no posix_fadvise.
 */
export function dropCached(fd: number, off: number, len: number): boolean {
  if (fadvise === undefined) {
    try {
      const c = koffi.load('libc.so.6');
      fadvise = c.func('int posix_fadvise(int fd, int64_t off, int64_t len, int advice)') as unknown as typeof fadvise;
    } catch {
      fadvise = null;
    }
  }
  if (fadvise == null) return false;
  fadvise(fd, off, len, POSIX_FADV_DONTNEED);
  return true;
}
