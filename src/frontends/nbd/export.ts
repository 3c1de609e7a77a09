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
  /** Pool quota: the most RAM pool bytes this export's objects may hold (PageStore.createArea). */
  maxPool?: number;
  /** A cache export of this raw image file (cache-export.ts); `size` is then the file's. */
  cache?: { path: string };
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

  /**
   * Fills dst (dst.length bytes) with the export's content at `offset`. Returns synchronously
   * when every page is in RAM (the fast path); returns a Promise when some page must be read from
   * a slower tier: dst is complete when it resolves. Throws (or rejects with) ERR_DECOMPRESS /
   * ERR_IO: no bytes of a failed read are data.
   */
  read(offset: number, dst: Uint8Array): void | Promise<void> {
    const ps = this.pageSize;
    const len = dst.length;
    let pos = 0;
    let page = Math.floor(offset / ps);
    const inPage = offset - page * ps;
    let waits: Promise<unknown>[] | null = null;
    if (inPage !== 0 && len > 0) {
      // A partial first page: load it whole into a buffer of its own (the reply may complete
      // later, so the export's shared scratch page cannot be used), then copy the part asked for.
      const k = Math.min(ps - inPage, len);
      const r = this.loadPartial(page, dst, 0, inPage, k);
      if (r !== null) (waits ??= []).push(r);
      pos = k;
      page++;
    }
    const whole = Math.floor((len - pos) / ps);
    if (whole > 0) {
      const r = this.store.startLoadBatch(this.area, page, whole, dst.subarray(pos, pos + whole * ps));
      if (typeof r !== 'number') (waits ??= []).push(r);
      pos += whole * ps;
      page += whole;
    }
    if (pos < len) {
      const r = this.loadPartial(page, dst, pos, 0, len - pos);
      if (r !== null) (waits ??= []).push(r);
    }
    if (waits === null) return;
    return Promise.all(waits).then(() => undefined);
  }

  /** Copies bytes [from, from+k) of page `page` to dst[at..]; null when done now, else a Promise. */
  private loadPartial(page: number, dst: Uint8Array, at: number, from: number, k: number): Promise<void> | null {
    if (!this.store.needsTierRead(this.area, page)) {
      this.loadPage(page, this.scratch);
      dst.set(this.scratch.subarray(from, from + k), at);
      return null;
    }
    const buf = new Uint8Array(this.pageSize); // one per partial page read from the tier
    return Promise.resolve(this.store.startLoadBatch(this.area, page, 1, buf)).then(() => { dst.set(buf.subarray(from, from + k), at); });
  }

  /**
   * Writes src at `offset`. Returns OK or ENOSPC (store rejected a page), synchronously when the
   * store could take every page at once, else a Promise (a lower tier must make room or be read
   * first). `src` must stay untouched until the Promise settles. Throws ERR_DECOMPRESS (RMW).
   */
  write(offset: number, src: Uint8Array): WireErrno | Promise<WireErrno> {
    const ps = this.pageSize;
    const len = src.length;
    let pos = 0;
    let page = Math.floor(offset / ps);
    const inPage = offset - page * ps;
    if (inPage !== 0 && len > 0) {
      const k = Math.min(ps - inPage, len);
      if (this.store.needsTierRead(this.area, page)) return this.writeSlow(offset, src);
      const e = this.patchPage(page, inPage, src.subarray(0, k));
      if (typeof e !== 'number') return e.then((x) => (x !== ERRNO.OK ? x : this.writeSlow(offset + k, src.subarray(k))));
      if (e !== ERRNO.OK) return e;
      pos = k;
      page++;
    }
    const whole = Math.floor((len - pos) / ps);
    if (whole > 0) {
      const r = this.store.startStoreBatch(this.area, page, src.subarray(pos, pos + whole * ps));
      if (typeof r !== 'number') return this.writeRest(r, whole, offset + pos + whole * ps, src.subarray(pos + whole * ps));
      if (r < whole) return errnoForStore(this.store.lastReject);
      pos += whole * ps;
      page += whole;
    }
    if (pos < len) {
      if (this.store.needsTierRead(this.area, page)) return this.writeSlow(offset + pos, src.subarray(pos));
      return this.patchPage(page, 0, src.subarray(pos));
    }
    return ERRNO.OK;
  }

  /** The rest of a write after its whole pages went async: wait, then the partial tail page. */
  private async writeRest(stored: Promise<number>, whole: number, tailOffset: number, tail: Uint8Array): Promise<WireErrno> {
    if (await stored < whole) return errnoForStore(this.store.lastReject);
    if (tail.length === 0) return ERRNO.OK;
    return this.writeSlow(tailOffset, tail);
  }

  /**
   * A write that must wait from its start: page by page with the non-blocking store calls, and
   * read-modify-write of partial pages through loads that may read the tier.
   */
  private async writeSlow(offset: number, src: Uint8Array): Promise<WireErrno> {
    const ps = this.pageSize;
    const buf = new Uint8Array(ps); // one page per slow write (the shared scratch may be in use by another request meanwhile)
    let pos = 0;
    while (pos < src.length) {
      const page = Math.floor((offset + pos) / ps);
      const inPage = offset + pos - page * ps;
      const k = Math.min(ps - inPage, src.length - pos);
      let n: number;
      if (k === ps) {
        n = await this.store.startStoreBatch(this.area, page, src.subarray(pos, pos + ps));
      } else {
        if (await this.store.startLoadBatch(this.area, page, 1, buf) === 0) buf.fill(0);
        buf.set(src.subarray(pos, pos + k), inPage);
        n = await this.store.startStoreBatch(this.area, page, buf);
      }
      if (n < 1) return errnoForStore(this.store.lastReject);
      pos += k;
    }
    return ERRNO.OK;
  }

  /** Invalidates every whole page inside [offset, offset+length); partial edge pages are kept. */
  trim(offset: number, length: number): void {
    const ps = this.pageSize;
    const first = Math.ceil(offset / ps);
    const end = this.pageEndFloor(offset + length);
    if (end > first) this.store.invalidateRange(this.area, first, end - first);
  }

  /** Makes [offset, offset+length) read as zeroes. noHole: store zero pages instead of holes. Sync or a Promise, as write(). */
  zero(offset: number, length: number, noHole: boolean): WireErrno | Promise<WireErrno> {
    const ps = this.pageSize;
    const end = offset + length;
    const first = Math.ceil(offset / ps);
    const last = this.pageEndFloor(end); // exclusive
    // Partial edge pages are read-modify-write; when one lives in the tier, the edges go async.
    const edges: [number, number][] = last <= first ? [[offset, end]] : [[offset, first * ps], [Math.max(last * ps, offset), end]];
    for (const [from, to] of edges) {
      if (from < to && this.store.needsTierRead(this.area, Math.floor(from / ps))) {
        return this.zeroSlow(offset, end, first, last, noHole);
      }
    }
    if (last <= first) return this.zeroBytes(offset, end); // the range lies inside one page (or straddles two without covering either)
    const e = this.zeroBytes(offset, first * ps);
    if (typeof e !== 'number') return e.then((x) => (x !== ERRNO.OK ? x : this.zeroSlow(first * ps, end, first, last, noHole)));
    if (e !== ERRNO.OK) return e;
    this.zeroWhole(first, last, noHole);
    return this.zeroBytes(Math.max(last * ps, offset), end);
  }

  private zeroWhole(first: number, last: number, noHole: boolean): void {
    if (noHole) this.store.storeZeroRange(this.area, first, last - first); // zero pages cost no allocation
    else this.store.invalidateRange(this.area, first, last - first);
  }

  private async zeroSlow(offset: number, end: number, first: number, last: number, noHole: boolean): Promise<WireErrno> {
    const ps = this.pageSize;
    if (last > first) this.zeroWhole(first, last, noHole);
    const edges: [number, number][] = last <= first ? [[offset, end]] : [[offset, first * ps], [Math.max(last * ps, offset), end]];
    for (const [from, to] of edges) {
      if (from >= to) continue;
      const e = await this.writeSlow(from, new Uint8Array(to - from));
      if (e !== ERRNO.OK) return e;
    }
    return ERRNO.OK;
  }

  /**
   * Writes base:allocation extents for [offset, offset+length) into `out` as (length, flags)
   * pairs and returns how many pairs. Stops at `maxExtents` pairs, after BLOCK_STATUS_MAX_BYTES,
   * or after the first extent when reqOne (the spec lets a reply cover less than was asked; clients
   * ask again from where it ended). Extents never run past the request.
   */
  blockStatus(offset: number, length: number, reqOne: boolean, out: Uint32Array, maxExtents: number): number {
    // kindRunEnd walks the slot map in one loop; each run becomes one extent.
    return this.fillExtents(offset, length, reqOne, out, maxExtents, (p) => this.pageState(p), (p, limit) => this.store.kindRunEnd(this.area, p, limit));
  }

  /**
   * blockStatus()'s extent writer, shared with subclasses: `stateOf(page)` gives a page's flags,
   * `runEnd(page, limit)` the first page after `page` (at most `limit`, exclusive) whose state
   * differs; each run becomes one extent, under the limits blockStatus() documents.
   */
  protected fillExtents(offset: number, length: number, reqOne: boolean, out: Uint32Array, maxExtents: number,
    stateOf: (page: number) => number, runEnd: (page: number, limit: number) => number): number {
    const ps = this.pageSize;
    const reqEnd = offset + length;
    let page = Math.floor(offset / ps);
    // Scan cap: at most BLOCK_STATUS_MAX_BYTES per reply, which also keeps every extent below 2^32.
    const lastPage = Math.min(Math.floor((reqEnd - 1) / ps), page + Math.max(1, Math.floor(BLOCK_STATUS_MAX_BYTES / ps)) - 1);
    let n = 0;
    let runStart = offset;
    while (page <= lastPage) {
      const state = stateOf(page);
      const end = runEnd(page, lastPage + 1); // exclusive page
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

  /** Loads a page that is in RAM (callers check needsTierRead first), zero-filling a hole. */
  private loadPage(page: number, into: Uint8Array): void {
    if (this.store.load(this.area, page, into) === 'miss') into.fill(0);
  }

  /**
   * RMW of one page in RAM: bytes [inPage, inPage + data.length) become data. Returns a Promise
   * when the store must wait (it then works on its own copy of the page: scratch is shared).
   */
  private patchPage(page: number, inPage: number, data: Uint8Array): WireErrno | Promise<WireErrno> {
    this.loadPage(page, this.scratch);
    this.scratch.set(data, inPage);
    return this.storeScratch(page);
  }

  private storeScratch(page: number): WireErrno | Promise<WireErrno> {
    const r = this.store.startStoreBatch(this.area, page, this.scratch, true);
    if (typeof r === 'number') return r === 1 ? ERRNO.OK : errnoForStore(this.store.lastReject);
    return r.then((n) => (n === 1 ? ERRNO.OK : errnoForStore(this.store.lastReject)));
  }

  /** Zeroes bytes [from, to) of the pages they touch, by RMW; a hole is already zero. */
  private zeroBytes(from: number, to: number): WireErrno | Promise<WireErrno> {
    const ps = this.pageSize;
    while (from < to) {
      const page = Math.floor(from / ps);
      const pageEnd = Math.min((page + 1) * ps, to);
      if (this.store.pageKind(this.area, page) !== 0) {
        this.loadPage(page, this.scratch);
        this.scratch.fill(0, from - page * ps, pageEnd - page * ps);
        const e = this.storeScratch(page);
        if (typeof e !== 'number') return e.then((x) => (x !== ERRNO.OK || pageEnd >= to ? x : this.writeSlow(pageEnd, new Uint8Array(to - pageEnd))));
        if (e !== ERRNO.OK) return e;
      }
      from = pageEnd;
    }
    return ERRNO.OK;
  }
}
