/**
 * File sources: raw page files, block devices and swap images, read sequentially in batches
 * (batchPages x pageSize bytes per read, into the analyzer's buffer).
 *
 * Pipes and character devices are read as streams (so a generator can feed pages through a
 * FIFO). Every whole page is analysed; bytes after the last whole page are counted as TAIL_BYTES.
 * A swap image (signature "SWAPSPACE2" or "SWAP-SPACE" in the last 10 bytes of the first 4 KiB)
 * has its first page, the header, skipped (HEADER = 1). The rest of a swap area is taken as is:
 * free slots still hold whatever was swapped there before, and the kernel's map of which slots
 * are in use is not on the device, so a swap image measures the slots' contents, not only the
 * live ones.
 */
import { closeSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';
import { Analyzer, S } from './analyzer.js';
import type { SourceError } from './proc.js';

const PAUSE = new Int32Array(new SharedArrayBuffer(4));

export type FileKind = 'file' | 'block_device' | 'swap_image';

export interface FileScan {
  status: 'ok' | 'partial' | 'error';
  error: SourceError | null;
  kind: FileKind;
  /** Size in bytes when known up front (regular files, block devices), else 0. */
  size: number;
}

/** Size of a file or block device in bytes, 0 if unknown. */
export function sizeOf(path: string): number {
  try {
    const fd = openSync(path, 'r');
    try { return deviceOrFileSize(fd); } finally { closeSync(fd); }
  } catch { return 0; }
}

import { deviceOrFileSize } from '../engine/device.js';
export { deviceOrFileSize };

function isSwapHeader(b: Uint8Array, n: number): boolean {
  if (n < 4096) return false;
  const sig = Buffer.from(b.buffer, b.byteOffset + 4086, 10).toString('latin1');
  return sig === 'SWAPSPACE2' || sig === 'SWAP-SPACE';
}

export function scanFile(an: Analyzer, path: string, onProgress?: (bytes: number) => void): FileScan {
  const res: FileScan = { status: 'ok', error: null, kind: 'file', size: 0 };
  let fd: number;
  let stream = false;
  // "-" and /dev/stdin read the inherited fd 0 (which may be a socket: Node spawns children with
  // socketpairs, and a socket cannot be reopened through /proc/self/fd).
  const stdin = path === '-' || path === '/dev/stdin';
  try {
    fd = stdin ? 0 : openSync(path, 'r');
    const st = fstatSync(fd);
    if (st.isDirectory()) { if (!stdin) closeSync(fd); throw Object.assign(new Error('is a directory'), { code: 'EISDIR' }); }
    if (st.isBlockDevice()) res.kind = 'block_device';
    // Pipes and character devices cannot be read at an offset: read them as a stream.
    stream = st.isFIFO() || st.isCharacterDevice() || st.isSocket();
    res.size = deviceOrFileSize(fd);
  } catch (e) {
    res.status = 'error';
    const code = (e as NodeJS.ErrnoException).code ?? 'EIO';
    res.error = { code, message: `${path}: ${(e as Error).message}` };
    return res;
  }
  const P = an.pageSize, buf = an.batch, cap = buf.length;
  let pos = 0, fill = 0, first = true, done = 0;
  try {
    for (;;) {
      let got: number;
      try {
        got = readSync(fd, buf, fill, cap - fill, stream ? null : pos);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
        Atomics.wait(PAUSE, 0, 0, 2); // a non-blocking stream with nothing yet: wait 2 ms
        continue;
      }
      pos += got;
      fill += got;
      if (first && (fill >= 4096 || got === 0)) {
        first = false;
        if (isSwapHeader(buf, fill)) {
          res.kind = 'swap_image';
          an.count(S.HEADER, 1);
          buf.copyWithin(0, P, fill);
          fill = Math.max(0, fill - P);
        }
      }
      if (fill === cap || (got === 0 && fill >= P)) {
        const pages = Math.floor(fill / P);
        an.processBatch(pages);
        done += pages * P;
        onProgress?.(done);
        const rest = fill - pages * P;
        if (rest > 0) buf.copyWithin(0, pages * P, fill);
        fill = rest;
      }
      if (got === 0) break;
    }
  } catch (e) {
    res.status = 'partial';
    const code = (e as NodeJS.ErrnoException).code ?? 'EIO';
    res.error = { code, message: `${path}: read failed at byte ${pos}: ${(e as Error).message}` };
  } finally {
    if (!stdin) closeSync(fd);
  }
  an.count(S.TAIL_BYTES, fill);
  return res;
}
