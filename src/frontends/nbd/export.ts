/**
 * An NBD export: a byte-addressed device on top of one area of the PageStore. The protocol layer
 * (connection.ts) owns the wire; this file owns only the data, the way an nbdkit plugin does. Every
 * method is called with a range that validateRequest() already checked against `size`.
 *
 *   byte offset:  |<-- head -->|<------ whole pages ------>|<-- tail -->|
 *   pages:        [  p0 (RMW)  ][ p1 ][ p2 ] ... [ pk-1 ]  [  pk (RMW)  ]
 *
 * Whole pages go straight to storeBatch/loadBatch on subarrays of the request buffer (no copy).
 * A partial page at either edge is read-modify-write through one scratch page: load (zero-fill on
 * miss), patch the bytes, store. The server is single-threaded and each call runs to completion,
 * so one scratch page per export is enough and no two requests interleave inside a page.
 *
 * Semantics:
 * - read: pages never written (or invalidated) read as zeroes.
 * - write: a rejected store (pool limit, allocation failure) stops the write and returns ENOSPC;
 *   pages before it are written, the rejected page keeps its old content (the store guarantees it).
 * - trim: invalidates the whole pages inside the range; partial pages at the edges are left as they
 *   are (TRIM is a hint; a trimmed range is not promised to read back as zeroes).
 * - zero: the whole range reads back as zeroes. Without NO_HOLE whole pages are invalidated (a hole
 *   reads as zeroes and costs nothing); with NO_HOLE they are stored as zero pages, which the store
 *   keeps without allocation and reports as "zero, not hole". Partial edges are RMW. Both ways are
 *   cheap, so FAST_ZERO never fails.
 * - blockStatus: base:allocation from store.pageKind: 0 (hole) → HOLE|ZERO, 1 (zero page) → ZERO,
 *   2 (data) → 0. Runs of equal state merge into one extent.
 *
 * Known limits: sizes are whole pages in the store; an export whose size is not a page multiple
 * owns a last page whose tail past `size` is unreachable (validation stops requests there).
 */
import type { AreaId, PageStore } from '../../core/page-store.js';
import { BLOCK_STATUS_MAX_BYTES, ERRNO, STATE_HOLE, STATE_ZERO, errnoForStore, type WireErrno } from './protocol.js';

export interface ExportSpec {
  /** Export name as clients ask for it; "" is the default export. At most 4096 UTF-8 bytes. */
  name: string;
  /** Size in bytes (any positive safe integer; the area gets ceil(size / pageSize) pages). */
  size: number;
  /** Reported in LIST and INFO_DESCRIPTION. */
  description?: string;
  /** Refuse WRITE, TRIM and WRITE_ZEROES with EPERM and advertise READ_ONLY. */
  readOnly?: boolean;
}

export class NbdExport {
  readonly name: string;
  readonly size: number;
  readonly description: string;
  readonly readOnly: boolean;
  readonly pageSize: number;
  readonly area: AreaId;
  /** One page of scratch for read-modify-write of partial pages. */
  private readonly scratch: Uint8Array;

  constructor(readonly store: PageStore, spec: ExportSpec, pageSize: number, area: AreaId) {
    this.name = spec.name;
    this.size = spec.size;
    this.description = spec.description ?? '';
    this.readOnly = spec.readOnly === true;
    this.pageSize = pageSize;
    this.area = area;
    this.scratch = new Uint8Array(pageSize);
  }

  /** Fills dst (dst.length bytes) with the export's content at `offset`. Throws ERR_DECOMPRESS. */
  read(offset: number, dst: Uint8Array): void {
    const ps = this.pageSize;
    const len = dst.length;
    let pos = 0;
    let page = Math.floor(offset / ps);
    let inPage = offset - page * ps;
    if (inPage !== 0 && len > 0) {
      const k = Math.min(ps - inPage, len);
      this.loadPage(page, this.scratch);
      dst.set(this.scratch.subarray(inPage, inPage + k), 0);
      pos = k;
      page++;
      inPage = 0;
    }
    const whole = Math.floor((len - pos) / ps);
    if (whole > 0) {
      this.store.loadBatch(this.area, page, whole, dst.subarray(pos, pos + whole * ps));
      pos += whole * ps;
      page += whole;
    }
    if (pos < len) {
      this.loadPage(page, this.scratch);
      dst.set(this.scratch.subarray(0, len - pos), pos);
    }
  }

  /** Writes src at `offset`. Returns OK or ENOSPC (store rejected a page). Throws ERR_DECOMPRESS (RMW). */
  write(offset: number, src: Uint8Array): WireErrno {
    const ps = this.pageSize;
    const len = src.length;
    let pos = 0;
    let page = Math.floor(offset / ps);
    const inPage = offset - page * ps;
    if (inPage !== 0 && len > 0) {
      const k = Math.min(ps - inPage, len);
      const e = this.patchPage(page, inPage, src.subarray(0, k));
      if (e !== ERRNO.OK) return e;
      pos = k;
      page++;
    }
    const whole = Math.floor((len - pos) / ps);
    if (whole > 0) {
      const n = this.store.storeBatch(this.area, page, src.subarray(pos, pos + whole * ps));
      if (n < whole) return errnoForStore(this.store.lastReject ?? 'reject_alloc_fail');
      pos += whole * ps;
      page += whole;
    }
    if (pos < len) return this.patchPage(page, 0, src.subarray(pos));
    return ERRNO.OK;
  }

  /** Invalidates every whole page inside [offset, offset+length); partial edge pages are kept. */
  trim(offset: number, length: number): void {
    const ps = this.pageSize;
    const first = Math.ceil(offset / ps);
    const end = this.pageEndFloor(offset + length);
    if (end > first) this.store.invalidateRange(this.area, first, end - first);
  }

  /** Makes [offset, offset+length) read as zeroes. noHole: store zero pages instead of holes. */
  zero(offset: number, length: number, noHole: boolean): WireErrno {
    const ps = this.pageSize;
    const end = offset + length;
    const first = Math.ceil(offset / ps);
    const last = this.pageEndFloor(end); // exclusive
    if (last <= first) {
      // The range lies inside one page (or straddles two without covering either).
      return this.zeroBytes(offset, end);
    }
    let e = this.zeroBytes(offset, first * ps);
    if (e !== ERRNO.OK) return e;
    if (noHole) {
      this.store.storeZeroRange(this.area, first, last - first); // zero pages cost no allocation
    } else {
      this.store.invalidateRange(this.area, first, last - first);
    }
    e = this.zeroBytes(Math.max(last * ps, offset), end);
    return e;
  }

  /**
   * Writes base:allocation extents for [offset, offset+length) into `out` as (length, flags)
   * pairs and returns how many pairs. Stops at `maxExtents` pairs, after BLOCK_STATUS_MAX_BYTES,
   * or after the first extent when reqOne (the spec lets a reply cover less than was asked; clients
   * ask again from where it ended). Extents never run past the request.
   */
  blockStatus(offset: number, length: number, reqOne: boolean, out: Uint32Array, maxExtents: number): number {
    const ps = this.pageSize;
    const reqEnd = offset + length;
    let page = Math.floor(offset / ps);
    // Scan cap: at most BLOCK_STATUS_MAX_BYTES per reply, which also keeps every extent below 2^32.
    const lastPage = Math.min(Math.floor((reqEnd - 1) / ps), page + Math.max(1, Math.floor(BLOCK_STATUS_MAX_BYTES / ps)) - 1);
    let n = 0;
    let runStart = offset;
    // kindRunEnd walks the slot map in one loop; each run becomes one extent.
    while (page <= lastPage) {
      const state = this.pageState(page);
      const end = this.store.kindRunEnd(this.area, page, lastPage + 1); // exclusive page
      const stop = Math.min(end * ps, reqEnd);
      out[2 * n] = stop - runStart;
      out[2 * n + 1] = state;
      n++;
      if (end > lastPage || reqOne || n === maxExtents) return n;
      runStart = stop;
      page = end;
    }
    return n;
  }

  // ---- helpers ------------------------------------------------------------------------------

  private pageState(page: number): number {
    const k = this.store.pageKind(this.area, page);
    return k === 0 ? STATE_HOLE | STATE_ZERO : k === 1 ? STATE_ZERO : 0;
  }

  /**
   * Exclusive end of the whole pages a range ending at byte `end` covers. A page counts as whole
   * when the range reaches its end, or reaches the export's end (the last page of an export whose
   * size is not a page multiple has no reachable bytes past `size`).
   */
  private pageEndFloor(end: number): number {
    const ps = this.pageSize;
    if (end >= this.size) return Math.ceil(this.size / ps);
    return Math.floor(end / ps);
  }

  private loadPage(page: number, into: Uint8Array): void {
    if (this.store.load(this.area, page, into) === 'miss') into.fill(0);
  }

  /** RMW of one page: bytes [inPage, inPage + data.length) become data. */
  private patchPage(page: number, inPage: number, data: Uint8Array): WireErrno {
    this.loadPage(page, this.scratch);
    this.scratch.set(data, inPage);
    return errnoForStore(this.store.store(this.area, page, this.scratch));
  }

  /** Zeroes bytes [from, to) that lie within one page, by RMW; a hole is already zero. */
  private zeroBytes(from: number, to: number): WireErrno {
    const ps = this.pageSize;
    while (from < to) {
      const page = Math.floor(from / ps);
      const pageEnd = Math.min((page + 1) * ps, to);
      if (this.store.pageKind(this.area, page) !== 0) {
        this.loadPage(page, this.scratch);
        this.scratch.fill(0, from - page * ps, pageEnd - page * ps);
        const e = errnoForStore(this.store.store(this.area, page, this.scratch));
        if (e !== ERRNO.OK) return e;
      }
      from = pageEnd;
    }
    return ERRNO.OK;
  }
}
