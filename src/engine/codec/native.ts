/**
 * Native bindings to the system's liblz4, libzstd and libxxhash through koffi (an FFI with
 * prebuilt binaries, so `npm ci` compiles nothing).
 *
 * Why FFI to the Debian libraries rather than an npm port: measured on this project's corpora
 * (bench/results/codec-bindings.md), liblz4 1.9.4 via FFI compressed 4 KiB pages ~1.7x faster
 * than lz4-napi (lz4_flex) and ~0.7% tighter, decompressed ~4x faster, and XXH3 via FFI hashed
 * ~3x faster than @node-rs/xxhash. All calls write into caller-owned scratch buffers: no
 * allocation per page.
 *
 * The libraries are loaded lazily, once; a missing library is ERR_NATIVE_LIBRARY with the
 * Debian package to install.
 */
import koffi from 'koffi';
import { ZdedupError } from '../../errors.js';

export interface Lz4 {
  /** Returns compressed length, or 0 when it does not fit in `dstCap`. */
  compress(src: Uint8Array, dst: Uint8Array, srcSize: number, dstCap: number): number;
  /** Returns decompressed length, or a negative number on malformed input. */
  decompress(src: Uint8Array, dst: Uint8Array, srcSize: number, dstCap: number): number;
}

export interface Zstd {
  /** Returns compressed length, or -1 on failure (including dst too small). */
  compress(dst: Uint8Array, dstCap: number, src: Uint8Array, srcSize: number, level: number): number;
  /** Returns decompressed length, or -1 on malformed input. */
  decompress(dst: Uint8Array, dstCap: number, src: Uint8Array, srcSize: number): number;
  maxLevel: number;
  minLevel: number;
}

export interface XxHash {
  /** 64-bit XXH3 of the first `len` bytes: a BigInt, or a number when below 2^53. */
  xxh3(src: Uint8Array, len: number): bigint | number;
}

function open(soname: string, pkg: string): ReturnType<typeof koffi.load> {
  try {
    return koffi.load(soname);
  } catch (e) {
    throw new ZdedupError('ERR_NATIVE_LIBRARY', `cannot load ${soname}: install the Debian package ${pkg} (apt-get install ${pkg})`, { cause: e });
  }
}

let lz4: Lz4 | undefined;
let zstd: Zstd | undefined;
let xxhash: XxHash | undefined;

export function nativeLz4(): Lz4 {
  if (lz4) return lz4;
  const L = open('liblz4.so.1', 'liblz4-1');
  const c = L.func('int LZ4_compress_default(const uint8_t *src, uint8_t *dst, int srcSize, int dstCapacity)');
  const d = L.func('int LZ4_decompress_safe(const uint8_t *src, uint8_t *dst, int compressedSize, int dstCapacity)');
  lz4 = { compress: c as Lz4['compress'], decompress: d as Lz4['decompress'] };
  return lz4;
}

export function nativeZstd(): Zstd {
  if (zstd) return zstd;
  const Z = open('libzstd.so.1', 'libzstd1');
  const createC = Z.func('void *ZSTD_createCCtx()');
  const createD = Z.func('void *ZSTD_createDCtx()');
  const cc = Z.func('size_t ZSTD_compressCCtx(void *cctx, uint8_t *dst, size_t cap, const uint8_t *src, size_t n, int level)');
  const dd = Z.func('size_t ZSTD_decompressDCtx(void *dctx, uint8_t *dst, size_t cap, const uint8_t *src, size_t n)');
  const maxL = Z.func('int ZSTD_maxCLevel()');
  const minL = Z.func('int ZSTD_minCLevel()');
  // One context each, reused for every page (zstd's own advice for many small inputs).
  // Contexts live for the process; there are exactly two.
  const cctx = createC();
  const dctx = createD();
  // size_t results: koffi gives a number when it fits in 2^53, a BigInt otherwise. zstd's error
  // codes are (size_t)-1..-120, so a BigInt (or anything > cap) means failure.
  const ok = (r: number | bigint, cap: number): number => (typeof r === 'number' && r <= cap ? r : -1);
  zstd = {
    compress: (dst, cap, src, n, level) => ok(cc(cctx, dst, cap, src, n, level), cap),
    decompress: (dst, cap, src, n) => ok(dd(dctx, dst, cap, src, n), cap),
    maxLevel: maxL() as number,
    minLevel: minL() as number,
  };
  return zstd;
}

export function nativeXxhash(): XxHash {
  if (xxhash) return xxhash;
  const X = open('libxxhash.so.0', 'libxxhash0');
  const h = X.func('uint64_t XXH3_64bits(const uint8_t *p, size_t len)');
  xxhash = { xxh3: h as XxHash['xxh3'] };
  return xxhash;
}

let mallocTuned = false;

/**
 * Pins glibc's mmap threshold at 512 KiB, so every 1 MiB pool arena gets its own mmap and goes
 * back to the OS the moment it is freed. Without this, glibc raises the threshold after the
 * first freed arena, later arenas land in the heap, and freeing arenas in the middle of the heap
 * does not lower RSS (measured: 400 arenas, every other one freed: RSS 446 MB without, 247 MB
 * with). Best effort: a libc without mallopt (musl) is left alone.
 */
export function tuneMallocForArenas(): void {
  if (mallocTuned) return;
  mallocTuned = true;
  try {
    const c = koffi.load('libc.so.6');
    const mallopt = c.func('int mallopt(int param, int value)');
    const M_MMAP_THRESHOLD = -3;
    mallopt(M_MMAP_THRESHOLD, 512 * 1024);
  } catch {
    /* not glibc: nothing to tune */
  }
}

let trimFn: (() => void) | null | undefined;

/**
 * Gives the free pages inside glibc's heap back to the OS (malloc_trim(0): since glibc 2.8 it
 * releases free pages anywhere in the heap, not only at its top). Socket reads (64 KiB each) and
 * other small buffers live there; after a burst of writes they are free but interleaved with live
 * allocations, so the heap cannot shrink and RSS stays up. Measured: a 256 MiB nbdcopy write left
 * the [heap] mapping at 54 MiB resident (4 MiB when ready). Call it after a full GC has freed the
 * buffers. Best effort: a no-op without glibc.
 */
export function trimMalloc(): void {
  if (trimFn === undefined) {
    try {
      const c = koffi.load('libc.so.6');
      const t = c.func('int malloc_trim(size_t pad)');
      trimFn = () => { t(0); };
    } catch {
      trimFn = null;
    }
  }
  trimFn?.();
}
