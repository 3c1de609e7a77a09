/**
 * The cold tier: objects idle longer than `coldAfter` are recompressed in groups of N pages into
 * one zstd frame each, and the frames are packed into RAM segments. Per-page zstd cannot reach
 * the ratio of a larger window (measured on a service-fleet image: zstd-3 page by page 140 MB,
 * zstd-9 in groups of 8 119 MB); swapped-out pages are cold by definition and most are never
 * read again, so paying one group decompression on the rare load buys ~15-20% of RAM.
 *
 *   RAM pool (lz4, one object per page)          cold segments (RAM, 1 MiB, append-only)
 *   ┌────┬────┬────┬────┬───┐  cold pass         ┌──────────┬──────┬────────────┬───────── ─ ─
 *   │ a  │ b  │ c  │ d  │...│ ─────────────────▶ │ frame g0 │ g1   │ frame g2   │ (open)
 *   └────┴────┴────┴────┴───┘  N idle objects    └──────────┴──────┴────────────┴───────── ─ ─
 *                              -> zstd(a|b|c|d)   frame = zstd of the members' raw pages, back to back
 *
 * Addresses (written here, packed/unpacked only by the helpers below):
 *   group id g = segment << 8 | slot   (a segment holds at most 256 groups and 1 MiB of frames)
 *   per object (only while the cold tier is on): coldG u32 = g, coldI u8 = index in the group,
 *   stamp u32 = last use in 100 ms ticks (new, loaded, deduplicated)
 *   per group: gOff, gLen (frame), gCount (members), gLive (members still here), gMember[g*N+i]
 *   per segment (a JS array entry each: segments are few): buffer, used bytes, live byte estimate
 *
 * Invariants:
 * - An object is IN_COLD exactly when some group lists it: gMember[coldG*N+coldI] === id. IN_COLD
 *   excludes IN_RAM and IN_TIER (a cold object has one copy: its group).
 * - A group's frame decompresses to exactly gCount pages; member i is page i. A dead member
 *   (invalidated, promoted, written back) keeps its page in the frame as garbage until the
 *   cleaner rewrites the group; gMember holds NIL for it.
 * - Segment space is reclaimed only by the cleaner (live groups copied forward, partial groups
 *   merged and recompressed) or when a segment's last live member dies.
 * - Loads check every page against its fingerprint (the page store's decode), so a damaged frame
 *   fails only the pages whose bytes changed: EIO for them, never wrong data.
 *
 * Known limits: a load of one cold page decompresses its whole group (a one-group cache makes
 * the neighbours of a sequential read free); the cold pass and the cleaner run zstd on the event
 * loop in bounded steps (~1-3 ms each) between requests.
 */
import { grow, growable } from '../engine/alloc/typed.js';
import { nativeZstd, type Zstd } from '../engine/codec/native.js';
import { parseCodec, type Codec } from '../engine/codec/codec.js';
import { ZdedupError } from '../errors.js';
import type { ZsPool } from '../engine/alloc/zspool.js';
import { IN_COLD, IN_RAM, IN_TIER, COLD_SKIP, type ObjectTable } from './objects.js';

// ---- tunables ---------------------------------------------------------------------------------

/** Bytes of frames per segment at most (one mmap each: glibc's threshold is pinned at 512 KiB). */
export const COLD_SEGMENT_BYTES = 1 << 20;
const SLOT_BITS = 8;
/** Groups per segment at most (the slot part of a group id). */
const GROUPS_PER_SEGMENT = 1 << SLOT_BITS;
/** Group ids scanned per cold-pass step at most. */
const PASS_SCAN_IDS = 16384;
/** Input bytes (pages) recompressed per cold-pass or cleaning step: ~2-4 ms of zstd-9. */
const STEP_PAGE_BYTES = 96 << 10;
/** The cleaner runs when garbage exceeds this fraction of cold bytes and one segment's worth. */
const CLEAN_GARBAGE_FRACTION = 0.25;
const NIL = 0xffffffff;
/** Clock ticks per second (stamps are u32 of 100 ms: 13 years before they wrap). */
const TICKS_PER_SECOND = 10;

// ---- group ids --------------------------------------------------------------------------------

/** A cold group id: segment << 8 | slot. */
export type GroupId = number & { readonly __brand: 'GroupId' };
export function packGroup(segment: number, slot: number): GroupId { return ((segment << SLOT_BITS) | slot) >>> 0 as GroupId; }
export function groupSegment(g: number): number { return g >>> SLOT_BITS; }

/** The cold tier as a caller configures it (PageStoreOptions.cold); defaults in brackets. */
export interface ColdConfig {
  /** 'zstd:LEVEL' for group frames ['zstd:9']. */
  codec?: string;
  /** Seconds of idleness before an object goes cold [60]; 0 = at the next pass. */
  afterSeconds?: number;
  /** Pages per group, 1..64 [8]. */
  groupPages?: number;
  /** Clock in milliseconds (tests) [performance.now]. */
  clock?: () => number;
  /** Bytes per cold segment [1 MiB]; tests use tiny segments so cleaning happens. */
  segmentBytes?: number;
}

/**
 * Metadata per cold object, for projections (zdedup analyze): stamp 4 + group 4 + index 1 = 9 per
 * object, plus its share of the group columns: gMember 4 per member slot, and gOff 4 + gLen 4 +
 * gCount 1 + gLive 1 = 10 per group, so 10 / 8 = 1.25 at groups of 8: 9 + 4 + 1.25 ≈ 15.
 */
export const COLD_OBJECT_METADATA_BYTES = 15;

export const DEFAULT_COLD_CODEC = 'zstd:9';
export const DEFAULT_COLD_AFTER_SECONDS = 60;
export const DEFAULT_COLD_GROUP_PAGES = 8;
export const MAX_COLD_GROUP_PAGES = 64;

/** Validates a ColdConfig (ERR_BAD_CODEC / ERR_INVALID_ARGUMENT) and fills in the defaults. */
export function parseColdOptions(cfg: ColdConfig): ColdOptions {
  const codec = parseCodec(cfg.codec ?? DEFAULT_COLD_CODEC);
  if (codec.name !== 'zstd') throw new ZdedupError('ERR_BAD_CODEC', `the cold codec must be zstd[:LEVEL], got "${cfg.codec}"`);
  const after = cfg.afterSeconds ?? DEFAULT_COLD_AFTER_SECONDS;
  if (typeof after !== 'number' || !Number.isFinite(after) || after < 0 || after > 365 * 86400) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', `cold-after must be a number of seconds from 0 to one year, got ${String(after)}`);
  }
  const n = cfg.groupPages ?? DEFAULT_COLD_GROUP_PAGES;
  if (!Number.isSafeInteger(n) || n < 1 || n > MAX_COLD_GROUP_PAGES) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', `cold-group must be an integer from 1 to ${MAX_COLD_GROUP_PAGES}, got ${String(n)}`);
  }
  const seg = cfg.segmentBytes ?? COLD_SEGMENT_BYTES;
  if (!Number.isSafeInteger(seg) || seg < 1024 || seg > 1 << 30) throw new ZdedupError('ERR_INVALID_ARGUMENT', `cold segment size must be 1 KiB..1 GiB, got ${String(seg)}`);
  return { level: codec.level, groupPages: n, afterSeconds: after, clock: cfg.clock, segmentBytes: seg };
}

/** What stats() of a store without a cold tier reports for the cold fields. */
export const NO_COLD_STATS: Readonly<ColdStats> = {
  cold_objects: 0, cold_bytes: 0, cold_pending_pages: 0, cold_loads: 0, cold_group_decompressions: 0, cold_groups_written: 0,
  cold_skipped_pages: 0, cold_promoted_pages: 0, cold_written_back_pages: 0, cold_cleaned_segments: 0, cold_segments: 0,
};

export interface ColdOptions {
  /** zstd level of group frames (--cold-codec zstd:LEVEL). */
  level: number;
  /** Pages per group, 1..64 (--cold-group). */
  groupPages: number;
  /** Seconds an object must be idle before the cold pass takes it (--cold-after); 0 = at once. */
  afterSeconds: number;
  /** Clock in milliseconds (tests); default performance.now. */
  clock?: () => number;
  segmentBytes: number;
}

/** What the cold tier needs of the page store: drop an object's RAM copy with all its accounting. */
export interface ColdHost {
  dropRam(id: number, len: number): void;
}

export interface ColdStats {
  /** Live objects held in cold groups. */
  cold_objects: number;
  /** Bytes of group frames in cold segments (live and garbage): the RAM the cold tier holds. */
  cold_bytes: number;
  /** Compressible RAM objects not yet cold (waiting to be idle for cold_after, or for their pass); 0 when settled. */
  cold_pending_pages: number;
  /** Loads served from a cold group. */
  cold_loads: number;
  /** Group frames decompressed for loads and dedup checks (loads of a cached group's neighbours cost none). */
  cold_group_decompressions: number;
  /** Groups written by the cold pass. */
  cold_groups_written: number;
  /** Objects left hot because zstd of their group did not beat their lz4 bytes. */
  cold_skipped_pages: number;
  /** Cold objects brought back into the RAM pool by a second load. */
  cold_promoted_pages: number;
  /** Cold objects written back to the disk tier (a bounded pool): part of written_back_pages. */
  cold_written_back_pages: number;
  /** Cold segments freed by the cleaner. */
  cold_cleaned_segments: number;
  /** Cold segments held. */
  cold_segments: number;
}

export class ColdTier {
  readonly level: number;
  readonly groupPages: number;
  readonly afterTicks: number;
  private readonly P: number;
  private readonly zstd: Zstd;
  private readonly clockMs: () => number;
  private readonly segmentBytes: number;

  // per object
  stamps = growable(Uint32Array);
  coldG = growable(Uint32Array);
  coldI = growable(Uint8Array);

  // per group (index = group id)
  private gOff = growable(Uint32Array);
  private gLen = growable(Uint32Array);
  private gCount = growable(Uint8Array);
  private gLive = growable(Uint8Array);
  private gMember = growable(Uint32Array); // g * N + i

  // per segment
  private segBuf: (Buffer | null)[] = [];
  private segUsed: number[] = [];
  private segGroups: number[] = [];
  private segLiveBytes: number[] = [];
  private segLiveMembers: number[] = [];
  private segBorn: number[] = [];
  private segDamaged: boolean[] = [];
  private freeSegs: number[] = [];
  private spare: Buffer | null = null;
  private openSeg = -1;

  // scratch (one group each)
  private readonly inBuf: Buffer;   // pages being grouped
  private readonly outBuf: Buffer;  // a frame being written
  private readonly members: Uint32Array;
  private readonly merged: Uint32Array;  // the cleaner's members being merged (members is the pass's)
  private k = 0;                    // members collected by the pass so far
  /** The decompressed group of the last load (cacheG = NIL: none). */
  private readonly cacheBuf: Buffer;
  private cacheG = NIL;
  /** After cacheLocate(): the page in cacheBuf. */
  pageOff = 0;

  // the pass
  private hand = 0;
  private passFound = 0;

  private c = {
    cold_objects: 0, cold_bytes: 0, cold_loads: 0, cold_group_decompressions: 0, cold_groups_written: 0,
    cold_skipped_pages: 0, cold_promoted_pages: 0, cold_written_back_pages: 0, cold_cleaned_segments: 0,
  };

  constructor(opts: ColdOptions, pageSize: number, private readonly objects: ObjectTable, private readonly pool: ZsPool,
    private readonly hot: Codec, private readonly host: ColdHost) {
    this.level = opts.level;
    this.groupPages = opts.groupPages;
    this.afterTicks = Math.round(opts.afterSeconds * TICKS_PER_SECOND);
    this.P = pageSize;
    this.zstd = nativeZstd();
    this.clockMs = opts.clock ?? (() => performance.now());
    this.segmentBytes = opts.segmentBytes;
    const span = this.groupPages * pageSize;
    this.inBuf = Buffer.allocUnsafeSlow(span);
    this.cacheBuf = Buffer.allocUnsafeSlow(span);
    this.outBuf = Buffer.allocUnsafeSlow(span + (span >>> 7) + 1024); // >= ZSTD_compressBound(span)
    this.members = new Uint32Array(this.groupPages);
    this.merged = new Uint32Array(this.groupPages);
  }

  /** The coarse clock: 100 ms ticks. */
  now(): number {
    return Math.floor(this.clockMs() / (1000 / TICKS_PER_SECOND)) >>> 0;
  }

  /** Sizes the per-object columns (called when the object table grows). */
  ensureIds(cap: number): void {
    this.stamps = grow(this.stamps, cap);
    this.coldG = grow(this.coldG, cap);
    this.coldI = grow(this.coldI, cap);
  }

  /** Notes a use of object `id` (stored, loaded, shared): its idle time starts again. */
  touch(id: number): void {
    this.stamps[id] = this.now();
  }

  // ---------------------------------------------------------------------------------------------
  // The cold pass

  /** True when `id` is a RAM-only, compressible object that has not been found unfit for grouping. */
  private eligible(id: number): boolean {
    return (this.objects.flags[id]! & (IN_RAM | IN_TIER | COLD_SKIP)) === IN_RAM && this.objects.lens[id]! < this.P;
  }

  /** Objects waiting for their cold pass (a scan of two byte columns: ~1 ms per million objects). */
  pending(): number {
    let n = 0;
    const lim = this.objects.idLimit;
    for (let id = 0; id < lim; id++) if (this.eligible(id)) n++;
    return n;
  }

  /**
   * One bounded step of the cold pass: scans ids from the hand, groups idle objects N at a time.
   * Returns true when it did something (more may follow), false when a full pass found nothing.
   */
  passStep(): boolean {
    const o = this.objects;
    const lim = o.idLimit;
    if (lim === 0) return false;
    const cutoff = this.now() - this.afterTicks;
    if (cutoff < 0) return false; // nothing can have been idle that long yet
    let pagesDone = 0;
    for (let scanned = 0; scanned < PASS_SCAN_IDS && pagesDone * this.P < STEP_PAGE_BYTES; scanned++) {
      if (this.hand >= lim) {
        // End of a pass: a partial group is written only when its members have waited twice the
        // idle time (at cold-after 0: at once), so a trickle of stores still forms full groups.
        if (this.k > 0 && this.oldestCollected() <= cutoff - this.afterTicks) { pagesDone += this.k; this.writeCollected(); }
        this.hand = 0;
        const found = this.passFound;
        this.passFound = 0;
        if (found === 0 && pagesDone === 0) { this.k = 0; return false; }
        return true;
      }
      const id = this.hand++;
      if (!this.eligible(id) || this.stamps[id]! > cutoff) continue;
      if (this.isCollected(id)) continue;
      this.members[this.k++] = id;
      if (this.k === this.groupPages) { pagesDone += this.k; this.writeCollected(); }
    }
    return true;
  }

  private isCollected(id: number): boolean {
    for (let i = 0; i < this.k; i++) if (this.members[i] === id) return true;
    return false;
  }

  private oldestCollected(): number {
    let t = NIL;
    for (let i = 0; i < this.k; i++) t = Math.min(t, this.stamps[this.members[i]!]!);
    return t;
  }

  /** Recompresses the collected objects (still eligible ones) as one group; drops their RAM copies. */
  private writeCollected(): void {
    const o = this.objects;
    const P = this.P;
    let n = 0, lz4Bytes = 0;
    for (let i = 0; i < this.k; i++) {
      const id = this.members[i]!;
      if (!this.eligible(id)) continue; // changed since it was collected
      const len = o.lens[id]!;
      this.pool.locate(id);
      if (!this.hot.decompress(this.pool.locBuf.subarray(this.pool.locOff, this.pool.locOff + len), len, this.inBuf.subarray(n * P, (n + 1) * P), P)) {
        o.flags[id] = o.flags[id]! | COLD_SKIP; // corrupt in RAM: left where a load reports it
        continue;
      }
      this.members[n++] = id;
      lz4Bytes += len;
    }
    this.k = 0;
    if (n === 0) return;
    this.passFound += n;
    const flen = this.zstd.compress(this.outBuf, lz4Bytes - 1, this.inBuf, n * P, this.level);
    if (flen <= 0) {
      // zstd of the group does not beat the members' own lz4 bytes: they stay hot, for good.
      for (let i = 0; i < n; i++) { const id = this.members[i]!; o.flags[id] = o.flags[id]! | COLD_SKIP; }
      this.c.cold_skipped_pages += n;
      return;
    }
    const g = this.appendFrame(this.outBuf, flen, n);
    for (let i = 0; i < n; i++) {
      const id = this.members[i]!;
      this.host.dropRam(id, o.lens[id]!);
      o.flags[id] = IN_COLD;
      this.coldG[id] = g;
      this.coldI[id] = i;
      this.gMember[g * this.groupPages + i] = id;
    }
    this.c.cold_objects += n;
    this.c.cold_groups_written++;
  }

  // ---------------------------------------------------------------------------------------------
  // Segments and groups

  /** Appends a frame of `count` members to the open segment; returns its group id (members unset). */
  private appendFrame(src: Uint8Array, len: number, count: number): number {
    let s = this.openSeg;
    if (s < 0 || this.segUsed[s]! + len > this.segBuf[s]!.length || this.segGroups[s]! === GROUPS_PER_SEGMENT) s = this.openSegment(len);
    const slot = this.segGroups[s]!++;
    const g = packGroup(s, slot);
    const off = this.segUsed[s]!;
    this.segBuf[s]!.set(src.subarray(0, len), off);
    this.segUsed[s] = off + len;
    this.segLiveBytes[s]! += len;
    this.segLiveMembers[s]! += count;
    this.c.cold_bytes += len;
    this.gOff[g] = off;
    this.gLen[g] = len;
    this.gCount[g] = count;
    this.gLive[g] = count;
    return g;
  }

  private openSegment(minBytes: number): number {
    const old = this.openSeg;
    const s = this.freeSegs.length > 0 ? this.freeSegs.pop()! : this.segBuf.length;
    const size = Math.max(this.segmentBytes, minBytes);
    let buf = this.spare !== null && this.spare.length >= size ? this.spare : null;
    if (buf !== null) this.spare = null; else buf = Buffer.allocUnsafeSlow(size);
    this.segBuf[s] = buf;
    this.segUsed[s] = 0; this.segGroups[s] = 0; this.segLiveBytes[s] = 0; this.segLiveMembers[s] = 0;
    this.segBorn[s] = this.now(); this.segDamaged[s] = false;
    const need = (s + 1) * GROUPS_PER_SEGMENT;
    // Each column grows by its own step (typed.ts), so each is checked on its own.
    this.gOff = grow(this.gOff, need); this.gLen = grow(this.gLen, need);
    this.gCount = grow(this.gCount, need); this.gLive = grow(this.gLive, need);
    this.gMember = grow(this.gMember, need * this.groupPages, NIL);
    this.gMember.fill(NIL, s * GROUPS_PER_SEGMENT * this.groupPages, need * this.groupPages);
    this.openSeg = s;
    if (old >= 0 && this.segLiveMembers[old] === 0) this.freeSegment(old); // sealed with nothing live
    return s;
  }

  private freeSegment(s: number): void {
    if (s === this.openSeg) this.openSeg = -1;
    const buf = this.segBuf[s]!;
    if (this.spare === null && buf.length === this.segmentBytes) this.spare = buf;
    this.c.cold_bytes -= this.segUsed[s]!;
    this.segBuf[s] = null;
    this.freeSegs.push(s);
    const base = s << SLOT_BITS;
    for (let k = 0; k < this.segGroups[s]!; k++) if (this.cacheG === base + k) this.cacheG = NIL;
  }

  /** Member `id` leaves its group (invalidated, promoted, written back). */
  private leave(id: number): void {
    const g = this.coldG[id]!;
    const s = groupSegment(g);
    this.gMember[g * this.groupPages + this.coldI[id]!] = NIL;
    this.segLiveBytes[s]! -= this.gLen[g]! / this.gCount[g]!;
    this.segLiveMembers[s]!--;
    this.gLive[g]!--;
    this.c.cold_objects--;
    this.objects.flags[id] = this.objects.flags[id]! & ~IN_COLD;
    if (this.segLiveMembers[s] === 0 && s !== this.openSeg) this.freeSegment(s);
  }

  /** The page store releases a cold object (its last reference is gone). */
  release(id: number): void {
    this.leave(id);
  }

  // ---------------------------------------------------------------------------------------------
  // Loads

  /**
   * Makes the page of cold object `id` available at cacheBuf[pageOff, pageOff + P): decompresses
   * its group unless it is the cached one. Returns false when the frame does not decompress (the
   * caller reports ERR_DECOMPRESS). The page is not yet checked against its fingerprint.
   */
  locate(id: number): boolean {
    const g = this.coldG[id]!;
    if (this.cacheG !== g && !this.decodeGroup(g, this.cacheBuf)) return false;
    this.cacheG = g;
    this.pageOff = this.coldI[id]! * this.P;
    return true;
  }

  get pageBuf(): Buffer { return this.cacheBuf; }

  private decodeGroup(g: number, into: Buffer): boolean {
    const s = groupSegment(g);
    const off = this.gOff[g]!, len = this.gLen[g]!;
    const expect = this.gCount[g]! * this.P;
    this.c.cold_group_decompressions++;
    this.cacheG = NIL;
    return this.zstd.decompress(into, expect, this.segBuf[s]!.subarray(off, off + len), len) === expect;
  }

  /** A load was served from a group. Returns true when the object should be promoted (second load while cold). */
  loaded(id: number, promoteAllowed: boolean): boolean {
    this.c.cold_loads++;
    const f = this.objects.flags[id]!;
    // Promotion policy: the first load marks the page (REFERENCED reused as "loaded while cold"),
    // a second one while cold brings it back hot — when the pool has room below its accept
    // threshold. One read pass over a disk image, or a swap-in, never rehydrates the cold tier.
    if ((f & 4) === 0) { this.objects.flags[id] = f | 4; return false; }
    return promoteAllowed;
  }

  /** Cold object `id` (its page is in cacheBuf) now has a RAM copy: it leaves its group. */
  promoted(id: number): void {
    this.leave(id);
    this.c.cold_promoted_pages++;
  }

  /** A cold object written to the disk tier leaves its group. */
  movedOut(id: number): void {
    this.leave(id);
    this.c.cold_written_back_pages++;
  }

  // ---------------------------------------------------------------------------------------------
  // Writeback (oldest segment first) and cleaning

  /**
   * The oldest cold group with live members, decompressed into `into`, listing its live members
   * in `ids` (id) — for writeback to the disk tier. Returns the member count set in `ids`/`idx`,
   * 0 when there is nothing cold, -1 when that group's frame is damaged (its segment is set aside).
   */
  oldestGroup(ids: Uint32Array, idx: Uint8Array): number {
    let best = -1;
    for (let s = 0; s < this.segBuf.length; s++) {
      if (this.segBuf[s] === null || this.segDamaged[s] || this.segLiveMembers[s] === 0) continue;
      if (best < 0 || this.segBorn[s]! < this.segBorn[best]!) best = s;
    }
    if (best < 0) return 0;
    const base = best << SLOT_BITS;
    for (let k = 0; k < this.segGroups[best]!; k++) {
      const g = base + k;
      if (this.gLive[g] === 0) continue;
      if (!this.locateGroup(g)) { this.segDamaged[best] = true; return -1; }
      let n = 0;
      for (let i = 0; i < this.gCount[g]!; i++) {
        const id = this.gMember[g * this.groupPages + i]!;
        if (id !== NIL) { ids[n] = id; idx[n++] = i; }
      }
      return n;
    }
    return 0;
  }

  private locateGroup(g: number): boolean {
    if (this.cacheG === g) return true;
    if (!this.decodeGroup(g, this.cacheBuf)) return false;
    this.cacheG = g;
    return true;
  }

  /** True when garbage in cold segments is worth a cleaning step. */
  needsCleaning(): boolean {
    const garbage = this.c.cold_bytes - this.liveBytes();
    return garbage > this.segmentBytes && garbage > this.c.cold_bytes * CLEAN_GARBAGE_FRACTION && this.cleaningCandidate() >= 0;
  }

  private liveBytes(): number {
    let b = 0;
    for (let s = 0; s < this.segBuf.length; s++) if (this.segBuf[s] !== null) b += this.segLiveBytes[s]!;
    return b;
  }

  /** The sealed segment with the best LFS cost-benefit score, or -1. */
  private cleaningCandidate(): number {
    let best = -1, bestScore = 0;
    const now = this.now();
    for (let s = 0; s < this.segBuf.length; s++) {
      if (this.segBuf[s] === null || s === this.openSeg || this.segDamaged[s]) continue;
      const u = this.segUsed[s]! > 0 ? this.segLiveBytes[s]! / this.segUsed[s]! : 0;
      if (u > 0.9) continue;
      const score = ((1 - u) * ((now - this.segBorn[s]!) / TICKS_PER_SECOND + 1)) / (1 + u);
      if (best < 0 || score > bestScore) { best = s; bestScore = score; }
    }
    return best;
  }

  /**
   * Cleans one segment: full groups are copied forward as they are, the live members of partial
   * groups are merged into new full groups (recompressed). Returns false when there was nothing to clean.
   */
  cleanStep(): boolean {
    const s = this.cleaningCandidate();
    if (s < 0) return false;
    const N = this.groupPages, P = this.P;
    const base = s << SLOT_BITS;
    const frames = this.segBuf[s]!;
    let k = 0; // merged pages collected in inBuf, their ids in merged
    const flush = (): void => {
      const flen = this.zstd.compress(this.outBuf, this.outBuf.length, this.inBuf, k * P, this.level);
      if (flen <= 0) throw new Error('zstd failed to compress a cold group into its bound');
      const g = this.appendFrame(this.outBuf, flen, k);
      for (let i = 0; i < k; i++) this.place(this.merged[i]!, g, i);
      k = 0;
    };
    for (let slot = 0; slot < this.segGroups[s]!; slot++) {
      const g = base + slot;
      const live = this.gLive[g]!;
      if (live === 0) continue;
      if (live === this.gCount[g]!) {
        const ng = this.appendFrame(frames.subarray(this.gOff[g]!, this.gOff[g]! + this.gLen[g]!), this.gLen[g]!, live);
        for (let i = 0; i < live; i++) this.place(this.gMember[g * N + i]!, ng, i);
        continue;
      }
      if (!this.locateGroup(g)) { this.segDamaged[s] = true; break; } // its members stay (their loads fail)
      for (let i = 0; i < this.gCount[g]!; i++) {
        const id = this.gMember[g * N + i]!;
        if (id === NIL) continue;
        this.cacheBuf.copy(this.inBuf, k * P, i * P, (i + 1) * P);
        this.merged[k++] = id;
        if (k === N) flush();
      }
    }
    if (k > 0) flush();
    if (this.segDamaged[s]) return true;
    this.freeSegment(s); // every live member moved: what is left is garbage
    this.c.cold_cleaned_segments++;
    return true;
  }

  /** Moves live member `id` to slot i of new group g (it leaves its old group, which keeps its counts right). */
  private place(id: number, g: number, i: number): void {
    const og = this.coldG[id]!;
    const os = groupSegment(og);
    this.gMember[og * this.groupPages + this.coldI[id]!] = NIL;
    this.gLive[og]!--;
    this.segLiveMembers[os]!--;
    this.segLiveBytes[os]! -= this.gLen[og]! / this.gCount[og]!;
    this.coldG[id] = g;
    this.coldI[id] = i;
    this.gMember[g * this.groupPages + i] = id;
  }

  // ---------------------------------------------------------------------------------------------
  // Stats, checks, test hooks

  stats(): ColdStats {
    let segs = 0;
    for (const b of this.segBuf) if (b !== null) segs++;
    return { ...this.c, cold_pending_pages: this.pending(), cold_segments: segs };
  }

  /** Bytes of cold metadata (per-object and per-group columns). */
  metadataBytes(): number {
    return this.stamps.byteLength + this.coldG.byteLength + this.coldI.byteLength + this.gOff.byteLength + this.gLen.byteLength +
      this.gCount.byteLength + this.gLive.byteLength + this.gMember.byteLength;
  }

  /** Live objects in cold groups (a counter: stats() also scans for cold_pending_pages). */
  liveObjects(): number { return this.c.cold_objects; }

  /** RAM held by cold segments (what poolOverTarget counts beside the pool). */
  bytes(): number { return this.c.cold_bytes; }

  /** White-box check: every IN_COLD object is listed by its group, counts agree. */
  checkInvariants(): void {
    const o = this.objects;
    let cold = 0;
    for (let id = 0; id < o.idLimit; id++) {
      const f = o.flags[id]!;
      if ((f & IN_COLD) === 0) continue;
      if ((f & (IN_RAM | IN_TIER)) !== 0) throw new Error(`cold object ${id} also has flags ${f}`);
      const g = this.coldG[id]!;
      if (this.gMember[g * this.groupPages + this.coldI[id]!] !== id) throw new Error(`cold object ${id} not listed by group ${g}`);
      if (this.segBuf[groupSegment(g)] === null) throw new Error(`cold object ${id} in freed segment`);
      cold++;
    }
    if (cold !== this.c.cold_objects) throw new Error(`cold_objects ${this.c.cold_objects} != ${cold}`);
    let used = 0;
    for (let s = 0; s < this.segBuf.length; s++) {
      if (this.segBuf[s] === null) continue;
      used += this.segUsed[s]!;
      let live = 0;
      for (let slot = 0; slot < this.segGroups[s]!; slot++) {
        const g = (s << SLOT_BITS) + slot;
        let n = 0;
        for (let i = 0; i < this.gCount[g]!; i++) if (this.gMember[g * this.groupPages + i] !== NIL) n++;
        if (n !== this.gLive[g]) throw new Error(`group ${g}: live ${this.gLive[g]} != ${n}`);
        live += n;
      }
      if (live !== this.segLiveMembers[s]) throw new Error(`segment ${s}: live members ${this.segLiveMembers[s]} != ${live}`);
    }
    if (used !== this.c.cold_bytes) throw new Error(`cold_bytes ${this.c.cold_bytes} != ${used}`);
  }

  /** Test hook: flips a byte in the middle of cold object `id`'s group frame. */
  corruptForTest(id: number): void {
    const g = this.coldG[id]!;
    this.segBuf[groupSegment(g)]![this.gOff[g]! + (this.gLen[g]! >>> 1)]! ^= 0x5a;
    this.cacheG = NIL;
  }
}
