/**
 * DiskTier: a log of compressed objects in large segments on a file or block device.
 *
 * Objects arrive still compressed, one append at a time, and are packed back to back into the
 * open segment's RAM write buffer. A full buffer is sealed and written with one large aligned
 * write (O_DIRECT where the medium allows it, so cold data does not come back into RAM through
 * the page cache; otherwise buffered writes and reads followed by posix_fadvise DONTNEED). A
 * record is readable from the moment it is appended: from its buffer until the segment is on
 * disk, then from disk with one small aligned read. Nothing is ever overwritten in place: a
 * released record is garbage that the cleaner reclaims by copying the live records of a sparse
 * segment forward and freeing it (LFS). The core decides which records are live and which
 * segments to clean; this file owns only the bytes.
 *
 *   write buffers (RAM, 2 x SEG)            backing file
 *   +-----------------------+               +--------+------+------+------+-- ... --+
 *   | OPEN: records so far  |-- seal -->    | header | seg0 | seg1 | seg2 |         |
 *   +-----------------------+   one write   +--------+------+------+------+-- ... --+
 *   | WRITING (in flight)   |                 states: FREE -> OPEN -> WRITING -> SEALED -> FREE
 *   +-----------------------+                 (STRANDED: the write failed; kept in RAM, retried)
 *
 * Per-segment state lives in typed arrays (state, used and live bytes, seal time, readers). No
 * structure exists per record: the core's object table holds (segment, offset) for each object.
 *
 * Invariants:
 * - A segment in a buffer (OPEN, WRITING, STRANDED) is read from the buffer, never from disk.
 * - A segment with readers in flight is never reused: freeing it waits (FREEING) until the last
 *   read settles, so a read started before a release or a clean still finds its record.
 * - live[s] = sum of the spans of records in s that the core still points at (appends add,
 *   release and cleaning subtract); a SEALED segment whose live reaches 0 is freed at once.
 * - `reserve` free segments are kept for the cleaner: plain appends never take them.
 *
 * Durable mode (`persist`, driven by src/core/durable): journal and checkpoint records share the
 * segments with objects (appendMeta), segments are written strictly in order and the open one in
 * parts at each sync() (its header, stamped with `used`, after the records it covers), one
 * fdatasync serves every sync() that arrives while one runs (group commit), and a freed segment
 * becomes reusable only after a sync (PENDING), so nothing recovery needs is overwritten before its
 * replacement is on the medium. Off: none of it runs (its columns are empty).
 *
 * Known limits: without durable mode the newest segment stays in its RAM buffer until it fills
 * (sealOpen() writes it early, wasting its tail until cleaned) and a restart starts from an empty
 * tier; the backing file is sparse, so a filesystem that fills up fails the write of
 * a segment (the segment stays in RAM and is retried; appends are refused meanwhile).
 */
import fs from 'node:fs';
import { ZdedupError } from '../../errors.js';
import { deviceOrFileSize } from '../../engine/device.js';
import { NO_REMOTE_STATS, type AppendResult, type CleanResult, type CleaningOwner, type Tier, type TierStats } from '../tier.js';
import { alignedBuffer, dropCached } from './aligned.js';
import {
  ALIGN, FILE_HEADER_SIZE, FILE_MAGIC, KIND_CKPT_CHUNK, KIND_CKPT_END, KIND_JOURNAL, REC_HEADER_SIZE, SEG_HEADER_SIZE, alignUp, checkPayload,
  checkSegHeader, decodeFileHeader, encodeFileHeader, encodeMetaRecord, encodeRecord, encodeSegHeader, isMetaKind, readRecordHeader,
  recordSpan, type FileHeader, type RecordView,
} from './format.js';

export interface DiskTierOptions {
  /** File or block device. A file is created (mode 0600) when missing. */
  path: string;
  /** Size to create or resize a file to; required for a new file. Ignored for a block device. */
  size?: number;
  pageSize: number;
  /** Bytes per segment: a multiple of 4096, at least 4 x (page size + 4 KiB). Default 4 MiB. */
  segmentSize?: number;
  /** RAM write buffers of one segment each (>= 2: one filling while one is written). Default 2. */
  writeBuffers?: number;
  /** Try O_DIRECT (default true); falls back to buffered I/O + fadvise when the medium refuses it. */
  direct?: boolean;
  /**
   * An existing file or device is used only when its first 4 KiB are zeroes or a zdedup header,
   * so a mistyped path never destroys other data; true overrides that check. Default false.
   */
  overwrite?: boolean;
  /** Where the tier reports episodes (write failures, recovery, damaged segments). */
  events?: (level: 'info' | 'warn' | 'error', msg: string, fields: Record<string, unknown>) => void;
  /**
   * Durable mode (src/core/durable): the file header carries `config` and is kept when the file
   * already has a durable header (its geometry wins: `size` must then match or be omitted);
   * segments are written in order, sync() writes the open segment's new part and fdatasyncs, and
   * a freed segment is reused only after the next sync (so nothing that recovery needs is
   * overwritten before its replacement is on the medium). Off: none of this runs.
   */
  persist?: { config: Buffer };
}

/** Where a lost object points after recovery (its record was missing or damaged): every read of it fails. */
export const LOST_SEGMENT = 0xffffffff;

export const DEFAULT_SEGMENT_SIZE = 4 << 20;

const FREE = 0, OPEN = 1, WRITING = 2, SEALED = 3, STRANDED = 4, FREEING = 5, PENDING = 6;
const STATE_NAMES = ['free', 'open', 'writing', 'sealed', 'stranded', 'freeing', 'pending'];
const RETRY_MS = 1000;
const READ_BUFFERS_KEPT = 64;

export class DiskTier implements Tier {
  readonly name = 'disk';
  readonly path: string;
  readonly segmentSize: number;
  readonly segmentCount: number;
  readonly backingSize: number;
  /** True when the medium took O_DIRECT. */
  readonly direct: boolean;
  lastW0 = 0;
  lastW1 = 0;
  locBuf: Uint8Array = Buffer.alloc(0);
  locOff = 0;

  /** The open medium (recovery and fsck read it directly). */
  readonly fd: number;
  /** Durable mode: the header found on the medium (null when the file was new or not durable). */
  readonly foundHeader: FileHeader | null = null;
  readonly persist: boolean;
  private readonly pageSize: number;
  private readonly reserve: number;
  private readonly events: NonNullable<DiskTierOptions['events']>;

  // ---- per segment ----
  private readonly segState: Uint8Array;
  private readonly segUsed: Uint32Array;
  private readonly segLive: Uint32Array;
  private readonly segSealed: Float64Array; // ms timestamp
  private readonly segReaders: Uint16Array;
  private readonly segBuf: Int8Array;       // write buffer holding the segment, or -1
  private readonly segRecords: Uint32Array;
  private readonly segNew: Uint32Array;      // bytes of new-data records (not cleaner copies) in the segment
  private readonly segDamaged: Uint8Array;
  // Durable mode: bytes of the segment on the medium, and its journal / checkpoint records still
  // counted in segLive (with the newest journal sequence and the checkpoint generation they hold).
  private readonly segWrittenTo: Uint32Array;
  private readonly segJBytes: Uint32Array;
  private readonly segJMax: Float64Array;
  private readonly segCkBytes: Uint32Array;
  private readonly segCkGen: Uint32Array;
  // Free segments, two stacks: ranges written before come first, so a sparse file on a full
  // filesystem reuses blocks it already has instead of asking for new ones; fresh ranges after.
  private readonly freeSegs: Uint32Array;   // stack of free segments written before
  private freeWritten = 0;
  private readonly freshSegs: Uint32Array;  // stack of free segments never written (or whose write failed)
  private freshCount: number;
  private readonly segWritten: Uint8Array;  // 1 once a write of the segment succeeded
  private get freeCount(): number { return this.freeWritten + this.freshCount; }

  // ---- write buffers ----
  private readonly bufs: Buffer[] = [];
  private readonly bufFree: number[] = [];
  private cur = -1;      // buffer being filled
  private curSeg = -1;
  private curUsed = 0;
  private curRecords = 0;
  private seq = 1;
  private writesInFlight = 0;
  private stranded: number[] = [];
  private retryTimer: NodeJS.Timeout | undefined;
  private failing = false;

  // ---- reads ----
  private readonly readSpan: number;
  private readonly readBufs: Buffer[] = [];
  private cleanBuf: Buffer | undefined;
  private readonly rv: RecordView = { codec: 0, len: 0, id: 0, fpLo: 0, fpHi: 0, serial: 0 };

  private inUse = 0;   // segments not FREE (FREEING ones included)
  private freeing = 0; // segments waiting for their readers before they are free
  private waiters: (() => void)[] = [];
  private idleResolvers: (() => void)[] = [];
  private closed = false;

  // ---- statistics ----
  // ---- durable mode ----
  private writeQueue: number[] = [];      // segments whose (partial or final) write waits for the one in flight
  private writeJobs = 0;                  // writes enqueued so far
  private writesDone = 0;                 // writes finished (in order), failed ones included
  private writeFailures = 0;
  private drainWaiters: { job: number; resolve: () => void }[] = [];
  private pendingFree: number[] = [];     // freed, reusable after the next sync
  private syncing: Promise<void> | null = null;
  private nextSync: Promise<void> | null = null;
  private syncScheduled = false;
  /** Journal sequence covered by the newest complete checkpoint, and its generation (0: none). */
  private ckptSeq = 0;
  private ckptGen = 0;
  /** Generation of a checkpoint being written (its records are live), else 0. */
  private ckptWriting = 0;

  private c = {
    disk_syncs: 0,
    disk_bytes_written: 0, disk_record_bytes_appended: 0, cleaned_segments: 0, disk_write_errors: 0,
    disk_read_errors: 0, disk_reads: 0, disk_live_bytes: 0, disk_used_bytes: 0, disk_cleaner_bytes_moved: 0, disk_new_bytes_written: 0,
  };

  constructor(o: DiskTierOptions) {
    const P = o.pageSize;
    const seg = o.segmentSize ?? DEFAULT_SEGMENT_SIZE;
    const minSeg = 4 * (P + ALIGN);
    if (!Number.isSafeInteger(seg) || seg % ALIGN !== 0 || seg < minSeg || seg > 1 << 30) {
      throw new ZdedupError('ERR_INVALID_ARGUMENT', `segment size must be a multiple of 4096 from ${minSeg} to 1 GiB, got ${String(seg)}`);
    }
    const nbuf = o.writeBuffers ?? 2;
    if (!Number.isSafeInteger(nbuf) || nbuf < 2 || nbuf > 64) throw new ZdedupError('ERR_INVALID_ARGUMENT', `write buffers must be 2..64, got ${String(nbuf)}`);
    this.path = o.path;
    this.pageSize = P;
    this.segmentSize = seg;
    this.events = o.events ?? (() => {});
    this.persist = o.persist !== undefined;
    let found = durableHeaderOf(o.path);
    if (!this.persist && found !== null && o.overwrite !== true) {
      throw new ZdedupError('ERR_INVALID_ARGUMENT', `backing ${o.path} holds a durable store (written with --persist): serve it with --persist, or pass --backing-overwrite to discard it`);
    }
    if (!this.persist) found = null;
    if (found !== null && o.size !== undefined && o.size !== found.backingSize) {
      throw new ZdedupError('ERR_INVALID_ARGUMENT', `backing ${o.path} holds a durable store of ${found.backingSize} bytes; --backing-size ${o.size} differs (omit it, or give the same size)`);
    }
    if (found !== null && (found.segmentSize !== seg && o.segmentSize !== undefined)) {
      throw new ZdedupError('ERR_INVALID_ARGUMENT', `backing ${o.path} holds segments of ${found.segmentSize} bytes; --segment-size ${seg} differs`);
    }
    const opened = openBacking(o.path, found !== null ? undefined : o.size, o.direct ?? true, found?.backingSize);
    if (opened.existed && o.overwrite !== true) checkOurs(opened.fd, o.path);
    this.fd = opened.fd;
    this.direct = opened.direct;
    this.backingSize = opened.size;
    if (found !== null) {
      this.foundHeader = found;
      this.segmentSize = found.segmentSize;
    }
    const count = found !== null ? found.segmentCount : Math.floor((opened.size - FILE_HEADER_SIZE) / this.segmentSize);
    if (count < 4) {
      fs.closeSync(this.fd);
      throw new ZdedupError('ERR_INVALID_ARGUMENT', `backing ${o.path} holds ${Math.max(0, count)} segments of ${this.segmentSize} bytes; it needs at least 4 (${FILE_HEADER_SIZE + 4 * this.segmentSize} bytes)`);
    }
    if (count > 0xffffffff / 2) throw new ZdedupError('ERR_INVALID_ARGUMENT', 'backing has too many segments; use a larger segment size');
    this.segmentCount = count;
    this.reserve = Math.min(2, count - 2);
    this.segState = new Uint8Array(count);
    this.segUsed = new Uint32Array(count);
    this.segLive = new Uint32Array(count);
    this.segSealed = new Float64Array(count);
    this.segReaders = new Uint16Array(count);
    this.segBuf = new Int8Array(count).fill(-1);
    this.segRecords = new Uint32Array(count);
    this.segNew = new Uint32Array(count);
    this.segDamaged = new Uint8Array(count);
    const pc = this.persist ? count : 0; // durable-mode columns cost nothing when it is off
    this.segWrittenTo = new Uint32Array(pc);
    this.segJBytes = new Uint32Array(pc);
    this.segJMax = new Float64Array(pc);
    this.segCkBytes = new Uint32Array(pc);
    this.segCkGen = new Uint32Array(pc);
    this.freeSegs = new Uint32Array(count);
    this.freshSegs = new Uint32Array(count);
    this.segWritten = new Uint8Array(count);
    // Pop order 0, 1, 2, ...: a fresh tier fills the medium front to back.
    for (let i = 0; i < count; i++) this.freshSegs[i] = count - 1 - i;
    this.freshCount = count;
    for (let i = 0; i < nbuf; i++) { this.bufs.push(alignedBuffer(this.segmentSize)); this.bufFree.push(i); }
    this.readSpan = alignUp(ALIGN + REC_HEADER_SIZE + P);
    // A fresh file header: without durable mode, earlier contents are not used. A durable header
    // found on the medium is kept (recovery reads the segments; writeConfig() updates it).
    if (found === null) {
      try {
        this.writeHeader(P, o.persist?.config);
      } catch (e) {
        fs.closeSync(this.fd);
        throw e;
      }
    }
  }

  /** Writes the file header (4096 B, one aligned write; fdatasync'd in durable mode). */
  writeHeader(pageSize: number, config?: Buffer): void {
    const h = alignedBuffer(FILE_HEADER_SIZE);
    try {
      encodeFileHeader(h, pageSize, this.segmentSize, this.segmentCount, this.backingSize, config);
    } catch (e) {
      throw new ZdedupError('ERR_INVALID_ARGUMENT', (e as Error).message);
    }
    try {
      fs.writeSync(this.fd, h, 0, FILE_HEADER_SIZE, 0);
      if (config !== undefined) fs.fdatasyncSync(this.fd);
    } catch (e) {
      throw new ZdedupError('ERR_IO', `cannot write the header of ${this.path}: ${(e as Error).message}`, { cause: e });
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Appends and sealing

  append(id: number, fpLo: number, fpHi: number, codec: number, src: Uint8Array, off: number, len: number, serial = 0): AppendResult {
    const r = this.room(recordSpan(len), false);
    if (r !== 'ok') return r;
    encodeRecord(this.bufs[this.cur]!, this.curUsed, id, fpLo, fpHi, codec, src, off, len, serial);
    this.segNew[this.curSeg]! += recordSpan(len);
    this.appended(recordSpan(len));
    return 'ok';
  }

  /**
   * Durable mode: appends a journal or checkpoint record (format.ts, KIND_*) whose payload is
   * src[0, len). It may use the cleaner's reserve (records are small and a FLUSH needs them).
   * Journal records stay live until a checkpoint covers their sequence; checkpoint records until
   * a newer checkpoint completes (ckptDone).
   */
  appendMeta(kind: number, seq: number, aux: number, gen: number, src: Uint8Array, len: number): AppendResult {
    const span = recordSpan(len);
    const r = this.room(span, true);
    if (r !== 'ok') return r;
    encodeMetaRecord(this.bufs[this.cur]!, this.curUsed, kind, seq, aux, gen, src, len);
    this.appended(span);
    this.countMeta(this.curSeg, kind, seq, gen, span);
    return 'ok';
  }

  private countMeta(s: number, kind: number, seq: number, gen: number, span: number): void {
    if (kind === KIND_JOURNAL) {
      this.segJBytes[s]! += span;
      if (seq > this.segJMax[s]!) this.segJMax[s] = seq;
    } else {
      this.segCkBytes[s]! += span;
      if (gen > this.segCkGen[s]!) this.segCkGen[s] = gen;
    }
  }

  /** True when a journal or checkpoint record (kind, seq, gen) is still needed by recovery. */
  private metaLive(kind: number, seq: number, gen: number): boolean {
    if (kind === KIND_JOURNAL) return seq > this.ckptSeq;
    return gen === this.ckptGen || (gen === this.ckptWriting && gen !== 0);
  }

  /** A checkpoint record set of generation `gen` is being written (its records count as live). */
  ckptStart(gen: number): void {
    this.ckptWriting = gen;
  }

  /**
   * Checkpoint `gen`, covering journal sequence `seq`, is complete in the log: older journal and
   * checkpoint records are dead. Segments left with nothing live are freed (reused after the next
   * sync, which makes the checkpoint durable first).
   */
  ckptDone(gen: number, seq: number): void {
    this.ckptSeq = seq;
    this.ckptGen = gen;
    this.ckptWriting = 0;
    for (let s = 0; s < this.segmentCount; s++) {
      let dead = 0;
      if (this.segJBytes[s]! > 0 && this.segJMax[s]! <= seq) { dead += this.segJBytes[s]!; this.segJBytes[s] = 0; }
      if (this.segCkBytes[s]! > 0 && this.segCkGen[s]! < gen) { dead += this.segCkBytes[s]!; this.segCkBytes[s] = 0; }
      if (dead === 0) continue;
      this.segLive[s]! -= dead;
      this.c.disk_live_bytes -= dead;
      if (this.segLive[s] === 0 && this.segState[s] === SEALED) this.freeSegment(s);
    }
  }

  /** The cleaner's append: the record b[at, at+span) is copied verbatim (header, checksums and all). */
  private appendCopy(b: Uint8Array, at: number, span: number): AppendResult {
    const r = this.room(span, true);
    if (r !== 'ok') return r;
    this.bufs[this.cur]!.set(b.subarray(at, at + span), this.curUsed);
    this.appended(span);
    this.c.disk_record_bytes_appended -= span; // not new data: counted as the cleaner's
    this.c.disk_cleaner_bytes_moved += span;
    return 'ok';
  }

  /** Makes sure the open segment has `span` bytes free, opening a new one if needed. */
  private room(span: number, cleaner: boolean): AppendResult {
    if (this.closed || (this.failing && !cleaner)) return 'failed';
    if (this.cur >= 0 && this.curUsed + span <= this.segmentSize) return 'ok';
    return this.openSegment(cleaner);
  }

  private appended(span: number): void {
    this.lastW0 = this.curSeg;
    this.lastW1 = this.curUsed;
    this.curUsed += span;
    this.curRecords++;
    this.segUsed[this.curSeg] = this.curUsed;
    this.segLive[this.curSeg]! += span;
    this.c.disk_live_bytes += span;
    this.c.disk_used_bytes += span;
    this.c.disk_record_bytes_appended += span;
  }

  /** Seals the open segment (if any) and opens a new one in a free buffer. */
  private openSegment(cleaner: boolean): AppendResult {
    // Check for room before sealing, so a refused append leaves the open segment as it was.
    if (this.bufFree.length === 0) {
      // The open segment cannot take this record, and no buffer is free for a new one: write it
      // now, so its buffer comes back (else a cleaner rescue waiting for room could wait forever).
      if (this.cur >= 0 && this.curRecords > 0) this.seal();
      return 'busy';
    }
    if (this.freeCount <= (cleaner ? 0 : this.reserve)) {
      if (cleaner || !this.reclaimable()) return 'full';
      // The open segment is full anyway: sealing it now makes its garbage cleanable too.
      this.seal();
      return 'busy';
    }
    this.seal();
    const b = this.bufFree.pop()!;
    const s = this.freeWritten > 0 ? this.freeSegs[--this.freeWritten]! : this.freshSegs[--this.freshCount]!;
    this.inUse++;
    this.cur = b;
    this.curSeg = s;
    this.curUsed = SEG_HEADER_SIZE;
    this.curRecords = 0;
    this.segState[s] = OPEN;
    this.segBuf[s] = b;
    this.segUsed[s] = SEG_HEADER_SIZE;
    this.segLive[s] = 0;
    this.segNew[s] = 0;
    this.segDamaged[s] = 0;
    this.c.disk_used_bytes += SEG_HEADER_SIZE;
    if (this.persist) {
      this.segWrittenTo[s] = 0;
      this.segJBytes[s] = 0; this.segJMax[s] = 0; this.segCkBytes[s] = 0; this.segCkGen[s] = 0;
      encodeSegHeader(this.bufs[b]!, s, SEG_HEADER_SIZE, 0, this.seq++); // the first partial write carries it
    }
    return 'ok';
  }

  sealOpen(): boolean {
    if (this.cur < 0 || this.curRecords === 0) return false;
    this.seal();
    return true;
  }

  private seal(): void {
    if (this.cur < 0) return;
    const b = this.cur, s = this.curSeg;
    this.cur = -1;
    this.curSeg = -1;
    if (!this.persist) encodeSegHeader(this.bufs[b]!, s, this.curUsed, this.curRecords, this.seq++); // durable mode stamps it per write
    this.segRecords[s] = this.curRecords;
    this.segState[s] = WRITING;
    this.write(s);
  }

  private write(s: number): void {
    if (this.persist) { this.enqueue(s); return; }
    const b = this.segBuf[s]!;
    const len = alignUp(this.segUsed[s]!);
    const pos = this.segPos(s);
    this.writesInFlight++;
    fs.write(this.fd, this.bufs[b]!, 0, len, pos, (err, n) => {
      this.writesInFlight--;
      if (err || n !== len) this.writeFailed(s, err ?? new Error(`short write: ${n} of ${len} bytes`));
      else this.written(s, len);
      if (this.writesInFlight === 0) for (const r of this.idleResolvers.splice(0)) r();
    });
  }

  // ---------------------------------------------------------------------------------------------
  // Durable mode: ordered writes, sync (group commit), deferred reuse

  /**
   * Durable mode writes segments strictly in order, one at a time: a record on the medium implies
   * every record appended before it is there too (a journal record never outlives the object it
   * names after a crash). A job is the segment's part not yet written, from the 4 KiB block that
   * holds its end on the medium: the final write of a sealed segment, or a partial write of the
   * open one for sync(). Returns the job's number.
   */
  private enqueue(s: number): number {
    this.writeQueue.push(s);
    const job = ++this.writeJobs;
    if (this.writesInFlight === 0) this.issueNext();
    return job;
  }

  private issueNext(): void {
    const s = this.writeQueue.shift();
    if (s === undefined) return;
    const st = this.segState[s]!;
    const b = this.segBuf[s]!;
    if (b < 0 || (st !== OPEN && st !== WRITING)) { this.jobDone(); this.issueNext(); return; }
    const used = this.segUsed[s]!;
    const from = this.segWrittenTo[s]! - (this.segWrittenTo[s]! % ALIGN);
    const to = alignUp(used);
    if (to <= from && st === OPEN) { this.jobDone(); this.issueNext(); return; }
    const buf = this.bufs[b]!;
    const pos = this.segPos(s);
    // The header's `used` bounds recovery's walk: it is written after the records it covers
    // (in the same write when the job starts at the segment's first block).
    const stamp = (): void => {
      encodeSegHeader(buf, s, used, s === this.curSeg ? this.curRecords : this.segRecords[s]!, buf.readUInt32LE(24) + buf.readUInt32LE(28) * 2 ** 32);
    };
    if (from === 0) stamp();
    this.writesInFlight++;
    const done = (err: Error | null, bytes: number): void => {
      this.writesInFlight--;
      if (err !== null) {
        this.writeFailures++;
        if (this.segState[s] === WRITING) this.writeFailed(s, err);
        else this.events('error', 'disk tier write of the open segment failed (a sync will report it)', { path: this.path, segment: s, cause: err });
      } else {
        this.segWrittenTo[s] = used;
        if (this.segState[s] === WRITING && used === this.segUsed[s]) this.written(s, bytes, to);
        else this.c.disk_bytes_written += bytes;
      }
      this.jobDone();
      this.issueNext();
      if (this.writesInFlight === 0) for (const r of this.idleResolvers.splice(0)) r();
    };
    fs.write(this.fd, buf, from, to - from, pos + from, (err, n) => {
      if (err || n !== to - from) { done(err ?? new Error(`short write: ${n} of ${to - from} bytes`), 0); return; }
      if (from === 0) { done(null, n); return; }
      stamp();
      fs.write(this.fd, buf, 0, ALIGN, pos, (err2, n2) => {
        done(err2 ?? (n2 !== ALIGN ? new Error(`short write: ${n2} of ${ALIGN} bytes`) : null), n + ALIGN);
      });
    });
  }

  private jobDone(): void {
    this.writesDone++;
    if (this.drainWaiters.length === 0) return;
    const keep: typeof this.drainWaiters = [];
    for (const w of this.drainWaiters) if (w.job <= this.writesDone) w.resolve(); else keep.push(w);
    this.drainWaiters = keep;
  }

  /**
   * Durable mode: resolves once every record appended before the call is on the medium (written
   * in order, then fdatasync). Concurrent calls share one fdatasync: a call made while a sync
   * runs joins the next one, which starts when the running one ends (group commit). Rejects
   * with ERR_IO when a write or the fdatasync failed. Without durable mode it resolves at once.
   */
  sync(): Promise<void> {
    if (!this.persist) return Promise.resolve();
    if (this.closed) return Promise.reject(new ZdedupError('ERR_CLOSED', 'disk tier is closed'));
    if (this.syncing === null) {
      this.syncing = this.runSync().finally(() => { this.syncing = null; });
      return this.syncing;
    }
    this.nextSync ??= this.syncing.catch(() => undefined).then(() => {
      this.nextSync = null;
      return this.sync();
    });
    return this.nextSync;
  }

  /**
   * Durable mode: called at the start of every sync; appends whatever the journal holds and
   * returns true when nothing is left out. Segments freed so far become reusable after the sync
   * only then (the journal records that replaced their contents must be on the medium first).
   */
  syncBarrier: (() => boolean) | null = null;

  /**
   * Durable mode: an object's serial, which identifies its record (ids are renumbered by a
   * restart, so a record's id field is only a hint there). Reads check it instead of the id.
   */
  serialOf: ((id: number) => number) | null = null;

  private async runSync(): Promise<void> {
    const clean = this.syncBarrier?.() ?? true;
    const freeing = clean ? this.pendingFree : [];
    if (clean) this.pendingFree = [];
    const failuresBefore = this.writeFailures;
    let job = this.writeJobs;
    if (this.cur >= 0 && this.curUsed > this.segWrittenTo[this.curSeg]!) job = this.enqueue(this.curSeg);
    try {
      if (this.writesDone < job) await new Promise<void>((resolve) => { this.drainWaiters.push({ job, resolve }); });
      if (this.writeFailures !== failuresBefore || this.stranded.length > 0) {
        throw new ZdedupError('ERR_IO', `disk tier ${this.path}: a segment write failed; the data is not durable yet`);
      }
      await new Promise<void>((resolve, reject) => {
        fs.fdatasync(this.fd, (err) => (err ? reject(new ZdedupError('ERR_IO', `fdatasync ${this.path}: ${err.message}`, { cause: err })) : resolve()));
      });
      this.c.disk_syncs++;
    } catch (e) {
      this.pendingFree.push(...freeing);
      throw e;
    }
    for (const s of freeing) if (this.segState[s] === PENDING) this.finalFree(s);
    if (freeing.length > 0) this.wake();
    if (!clean && this.pendingFree.length > 0) this.scheduleSync();
  }

  /** A segment freed in durable mode becomes reusable after the next sync; one is started soon. */
  private deferFree(s: number): void {
    this.segState[s] = PENDING;
    this.pendingFree.push(s);
    this.scheduleSync();
  }

  private scheduleSync(): void {
    if (this.syncScheduled || this.closed) return;
    this.syncScheduled = true;
    setTimeout(() => {
      this.syncScheduled = false;
      if (!this.closed) this.sync().catch((e: unknown) => { this.events('error', 'background sync failed', { path: this.path, cause: e }); });
    }, 5).unref();
  }

  /** Segment s is on the medium: `len` bytes were just written, the first `span` of it are to drop from the page cache. */
  private written(s: number, len: number, span = len): void {
    const b = this.segBuf[s]!;
    this.c.disk_bytes_written += len;
    this.c.disk_new_bytes_written += this.segNew[s]!;
    if (!this.direct) {
      // Written through the page cache: make it durable enough to drop, then drop it.
      const pos = this.segPos(s);
      fs.fdatasync(this.fd, () => { dropCached(this.fd, pos, span); });
    }
    this.segBuf[s] = -1;
    this.bufFree.push(b);
    this.segSealed[s] = Date.now();
    this.segState[s] = SEALED;
    this.segWritten[s] = 1;
    const i = this.stranded.indexOf(s);
    if (i >= 0) this.stranded.splice(i, 1);
    if (this.failing && this.stranded.length === 0) {
      this.failing = false;
      this.events('info', 'disk tier writes recovered', { path: this.path });
    }
    if (this.segLive[s] === 0) this.freeSegment(s);
    this.wake();
  }

  private writeFailed(s: number, err: Error): void {
    this.c.disk_write_errors++;
    this.segState[s] = STRANDED;
    if (!this.stranded.includes(s)) this.stranded.push(s);
    if (!this.failing) {
      this.failing = true;
      this.events('error', 'disk tier write failed: objects stay in RAM, writes to the tier are refused until a retry succeeds', {
        path: this.path, segment: s, cause: err, retry_ms: RETRY_MS,
      });
    }
    if (this.retryTimer === undefined && !this.closed) {
      this.retryTimer = setTimeout(() => {
        this.retryTimer = undefined;
        for (const t of this.stranded.slice()) {
          if (this.segState[t] !== STRANDED) continue;
          if (this.segLive[t] === 0) { this.dropStranded(t); continue; }
          this.segState[t] = WRITING;
          this.write(t);
        }
      }, RETRY_MS);
      this.retryTimer.unref();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Reads

  locateBuffered(w0: number, w1: number): boolean {
    const b = this.segBuf[w0];
    if (b === undefined || b < 0) return false; // (undefined: a lost object's sentinel segment)
    this.locBuf = this.bufs[b]!;
    this.locOff = w1 + REC_HEADER_SIZE;
    return true;
  }

  read(w0: number, w1: number, id: number, len: number, fpLo: number, fpHi: number, dst: Uint8Array, dstOff: number): Promise<void> {
    let start: number, end: number;
    try {
      if (this.readBuffered(w0, w1, id, len, fpLo, fpHi, dst, dstOff)) return Promise.resolve();
      start = this.spanStart(w0, w1);
      end = this.spanEnd(w0, w1, len);
    } catch (e) {
      return Promise.reject(e);
    }
    this.pin(w0);
    const rb = this.readBufs.pop() ?? alignedBuffer(this.readSpan);
    this.c.disk_reads++;
    return new Promise<void>((resolve, reject) => {
      fs.read(this.fd, rb, 0, end - start, start, (err, n) => {
        try {
          if (err) throw this.readError(w0, w1, err.message, err);
          this.readDone(rb, n, start, end, w0, w1, id, len, fpLo, fpHi, dst, dstOff);
          resolve();
        } catch (e) {
          reject(e);
        } finally {
          if (this.readBufs.length < READ_BUFFERS_KEPT) this.readBufs.push(rb);
          this.unpin(w0);
        }
      });
    });
  }

  readSync(w0: number, w1: number, id: number, len: number, fpLo: number, fpHi: number, dst: Uint8Array, dstOff: number): void {
    if (this.readBuffered(w0, w1, id, len, fpLo, fpHi, dst, dstOff)) return;
    const start = this.spanStart(w0, w1);
    const end = this.spanEnd(w0, w1, len);
    const rb = this.readBufs.pop() ?? alignedBuffer(this.readSpan);
    this.c.disk_reads++;
    try {
      let n: number;
      try {
        n = fs.readSync(this.fd, rb, 0, end - start, start);
      } catch (e) {
        throw this.readError(w0, w1, (e as Error).message, e);
      }
      this.readDone(rb, n, start, end, w0, w1, id, len, fpLo, fpHi, dst, dstOff);
    } finally {
      if (this.readBufs.length < READ_BUFFERS_KEPT) this.readBufs.push(rb);
    }
  }

  /** Serves a read from the segment's RAM buffer when it has one (true), else checks it can be read from the medium (false). */
  private readBuffered(w0: number, w1: number, id: number, len: number, fpLo: number, fpHi: number, dst: Uint8Array, dstOff: number): boolean {
    if (this.closed) throw new ZdedupError('ERR_CLOSED', 'disk tier is closed');
    if (w0 >= this.segmentCount) throw this.readError(w0, w1, 'the record was missing or damaged at recovery');
    const b = this.segBuf[w0]!;
    if (b >= 0) {
      this.checkAndCopy(this.bufs[b]!, w1, this.segUsed[w0]!, w0, w1, id, len, fpLo, fpHi, dst, dstOff);
      return true;
    }
    const st = this.segState[w0]!;
    if (st !== SEALED && st !== FREEING) throw this.readError(w0, w1, `segment is ${STATE_NAMES[st]}`);
    return false;
  }

  /** The aligned span [start, end) of the medium that holds the record at (w0, w1) of `len` payload bytes. */
  private spanStart(w0: number, w1: number): number {
    const pos = this.segPos(w0) + w1;
    return pos - (pos % ALIGN);
  }
  private spanEnd(w0: number, w1: number, len: number): number {
    return alignUp(this.segPos(w0) + w1 + REC_HEADER_SIZE + len);
  }

  /** After the span was read into rb: checks the length, drops cached pages, checks and copies the record. */
  private readDone(rb: Buffer, n: number, start: number, end: number, w0: number, w1: number, id: number, len: number,
    fpLo: number, fpHi: number, dst: Uint8Array, dstOff: number): void {
    if (n !== end - start) throw this.readError(w0, w1, `short read: ${n} of ${end - start} bytes`);
    if (!this.direct) dropCached(this.fd, start, end - start);
    this.checkAndCopy(rb, this.segPos(w0) + w1 - start, n, w0, w1, id, len, fpLo, fpHi, dst, dstOff);
  }

  /** Checks that b[at..] is object `id`'s record, then copies its payload out; throws ERR_DISK_READ. */
  private checkAndCopy(b: Uint8Array, at: number, limit: number, w0: number, w1: number, id: number, len: number,
    fpLo: number, fpHi: number, dst: Uint8Array, dstOff: number): void {
    const rv = this.rv;
    if (!readRecordHeader(b, at, limit, rv)) throw this.readError(w0, w1, 'bad record header');
    const same = this.serialOf === null ? rv.id === id : rv.serial === this.serialOf(id);
    if (rv.len !== len || !same || rv.fpLo !== fpLo || rv.fpHi !== fpHi) throw this.readError(w0, w1, 'record is not the expected object');
    if (!checkPayload(b, at, len)) throw this.readError(w0, w1, 'payload checksum mismatch');
    dst.set(b.subarray(at + REC_HEADER_SIZE, at + REC_HEADER_SIZE + len), dstOff);
  }

  private readError(w0: number, w1: number, why: string, cause?: unknown): ZdedupError {
    this.c.disk_read_errors++;
    return new ZdedupError('ERR_DISK_READ', `disk tier ${this.path}: segment ${w0} offset ${w1}: ${why}`, { cause });
  }

  pin(s: number): void {
    if (s < this.segmentCount) this.segReaders[s]!++;
  }

  unpin(s: number): void {
    if (s < this.segmentCount && --this.segReaders[s]! === 0 && this.segState[s] === FREEING) this.reallyFree(s);
  }

  // ---------------------------------------------------------------------------------------------
  // Release, free space, cleaning

  release(w0: number, w1: number, len: number): void {
    if (w0 >= this.segmentCount) return; // a lost object holds no space
    const span = recordSpan(len);
    this.segLive[w0]! -= span;
    this.c.disk_live_bytes -= span;
    if (this.segLive[w0] !== 0) return;
    if (this.segState[w0] === SEALED) this.freeSegment(w0);
    else if (this.segState[w0] === STRANDED) this.dropStranded(w0);
  }

  /**
   * A segment whose write failed and whose records are all released needs no write at all:
   * its buffer and segment are freed, and once none is left stranded the tier takes appends again
   * (e.g. a filesystem that filled up, after the client discarded what it had stored).
   */
  private dropStranded(s: number): void {
    const b = this.segBuf[s]!;
    this.segBuf[s] = -1;
    this.bufFree.push(b);
    this.stranded.splice(this.stranded.indexOf(s), 1);
    this.segState[s] = SEALED; // so freeSegment's accounting applies
    this.freeSegment(s);
    // Its write failed (often: the filesystem could not allocate that range): hand it out last.
    // Rare, so the O(n) shift is fine.
    if (this.segWritten[s] === 0 && this.segState[s] === FREE) {
      const i = this.freshSegs.subarray(0, this.freshCount).lastIndexOf(s);
      if (i > 0) { this.freshSegs.copyWithin(1, 0, i); this.freshSegs[0] = s; }
    }
    if (this.failing && this.stranded.length === 0) {
      this.failing = false;
      this.events('info', 'disk tier writes recovered: the failed segments held nothing live any more', { path: this.path });
    }
    this.wake();
  }

  private freeSegment(s: number): void {
    this.c.disk_used_bytes -= this.segUsed[s]!;
    this.segUsed[s] = 0;
    if (this.segReaders[s]! > 0) { this.segState[s] = FREEING; this.freeing++; return; }
    this.reallyFree(s);
  }

  private reallyFree(s: number): void {
    if (this.segState[s] === FREEING) this.freeing--;
    if (this.persist) { this.deferFree(s); return; }
    this.finalFree(s);
  }

  private finalFree(s: number): void {
    this.inUse--;
    this.segState[s] = FREE;
    if (this.segWritten[s] !== 0) this.freeSegs[this.freeWritten++] = s;
    else this.freshSegs[this.freshCount++] = s;
    this.wake();
  }

  /**
   * True when waiting can make room: segments hold garbage the cleaner can reclaim (from the
   * running totals, O(1): this is asked on every refused append), a freed segment waits for its
   * readers, or a write in flight will free a buffer.
   */
  private reclaimable(): boolean {
    const garbage = this.c.disk_used_bytes - this.c.disk_live_bytes - this.inUse * SEG_HEADER_SIZE;
    return garbage > 0 || this.freeing > 0 || this.writesInFlight > 0 || this.pendingFree.length > 0 || this.syncing !== null;
  }

  needsCleaning(): boolean {
    if (this.stranded.length > 0) return true; // segments to rescue
    const low = Math.max(this.reserve + 2, Math.ceil(this.segmentCount / 16));
    return this.freeCount < low;
  }

  cleaningCandidates(score: (live: number, used: number, ageSeconds: number) => number, max: number): number[] {
    for (const t of this.stranded) if (this.segState[t] === STRANDED) return [t]; // rescue first
    const now = Date.now();
    const best: { s: number; v: number }[] = []; // at most `max` entries (a handful), not per segment
    for (let s = 0; s < this.segmentCount; s++) {
      if (this.segState[s] !== SEALED || this.segDamaged[s] !== 0 || this.segReaders[s]! > 0) continue;
      const used = this.segUsed[s]!, live = this.segLive[s]!;
      if (live + SEG_HEADER_SIZE >= used) continue; // nothing to gain
      const v = score(live, used, (now - this.segSealed[s]!) / 1000);
      if (best.length < max) best.push({ s, v });
      else if (v > best[best.length - 1]!.v) best[best.length - 1] = { s, v };
      else continue;
      best.sort((a, b) => b.v - a.v);
    }
    return best.map((x) => x.s);
  }

  async clean(s: number, owner: CleaningOwner): Promise<CleanResult> {
    const r: CleanResult = { outcome: 'done', moved_records: 0, moved_bytes: 0 };
    if (!this.closed && this.segState[s] === STRANDED) return this.rescue(s, owner, r);
    if (this.closed || this.segState[s] !== SEALED) { r.outcome = 'gone'; return r; }
    const used = this.segUsed[s]!;
    const len = alignUp(used);
    this.cleanBuf ??= alignedBuffer(this.segmentSize);
    const b = this.cleanBuf;
    this.pin(s);
    try {
      const n = await new Promise<number>((resolve, reject) => {
        fs.read(this.fd, b, 0, len, this.segPos(s), (err, got) => (err ? reject(err) : resolve(got)));
      });
      if (!this.direct) dropCached(this.fd, this.segPos(s), len);
      // Durable mode writes a segment in parts and recovery rebuilds `used` from the records, so
      // the header's `used` may lag; its records check themselves.
      if (n !== len || (!this.persist && checkSegHeader(b, s, this.segmentSize) !== used)) return this.damaged(s, r, 'segment header');
    } catch (e) {
      this.c.disk_read_errors++;
      return this.damaged(s, r, (e as Error).message);
    } finally {
      this.unpin(s);
    }
    if (this.segState[s] !== SEALED) { r.outcome = 'gone'; return r; } // freed while we read it
    if (!this.moveLive(b, s, used, owner, r, 'on disk')) return r;
    if (this.segLive[s] !== 0) {
      this.events('error', 'cleaner: live bytes left after a full walk (accounting bug); segment kept', { segment: s, live: this.segLive[s] });
      r.outcome = 'damaged';
      this.segDamaged[s] = 1;
      return r;
    }
    this.c.cleaned_segments++;
    this.freeSegment(s);
    return r;
  }

  /**
   * A segment whose write failed is emptied from its RAM buffer into other segments (preferring
   * ranges written before), so one bad range — a filesystem that cannot allocate it, a bad sector —
   * does not keep the tier failing. Synchronous: the buffer is in RAM.
   */
  private rescue(s: number, owner: CleaningOwner, r: CleanResult): CleanResult {
    if (!this.moveLive(this.bufs[this.segBuf[s]!]!, s, this.segUsed[s]!, owner, r, 'in RAM')) return r;
    if (this.segLive[s] === 0 && this.segState[s] === STRANDED) this.dropStranded(s);
    return r;
  }

  /**
   * Walks the records of segment s (its image b[0, used)), asks the owner about each, copies live
   * ones forward verbatim (checksums included: a payload that rotted on disk stays detectably bad)
   * and takes them off s's live bytes. False when it stopped: r.outcome says why (busy, damaged).
   */
  private moveLive(b: Uint8Array, s: number, used: number, owner: CleaningOwner, r: CleanResult, where: string): boolean {
    const rv = this.rv;
    for (let at = SEG_HEADER_SIZE, step = 0; at < used && this.segLive[s] !== 0; at += step) {
      if (!readRecordHeader(b, at, used, rv)) {
        // Durable mode: a torn or rotted record that recovery skipped over; resynchronise 8 bytes on, as recovery does.
        if (this.persist) { step = 8; continue; }
        this.damaged(s, r, `record header at ${at} ${where}`);
        return false;
      }
      step = recordSpan(rv.len);
      if (isMetaKind(rv.codec)) {
        if (!this.moveMeta(b, s, at, r)) return false;
        continue;
      }
      const id = owner.resolve !== undefined ? owner.resolve(rv.id, s, at, rv.fpLo, rv.fpHi) : rv.id;
      const what = id < 0 ? 'dead' : owner.liveness(id, s, at);
      if (what === 'dead') continue;
      const span = recordSpan(rv.len);
      if (what === 'move') {
        if (this.appendCopy(b, at, span) !== 'ok') { r.outcome = 'busy'; return false; }
        owner.relocated(id, this.lastW0, this.lastW1);
        r.moved_records++;
        r.moved_bytes += span;
      }
      this.segLive[s]! -= span;
      this.c.disk_live_bytes -= span;
    }
    return true;
  }

  /** The cleaner meets a journal or checkpoint record at b[at..] of segment s: copy it forward if still live. */
  private moveMeta(b: Uint8Array, s: number, at: number, r: CleanResult): boolean {
    const rv = this.rv;
    const kind = rv.codec, seq = rv.id + rv.fpLo * 2 ** 32, gen = rv.serial ?? 0;
    const span = recordSpan(rv.len);
    const counted = kind === KIND_JOURNAL ? this.segJBytes : this.segCkBytes;
    if (counted[s]! === 0) return true; // already uncounted by ckptDone: dead
    if (this.metaLive(kind, seq, gen)) {
      if (this.appendCopy(b, at, span) !== 'ok') { r.outcome = 'busy'; return false; }
      this.countMeta(this.lastW0, kind, seq, gen, span);
      r.moved_records++;
      r.moved_bytes += span;
    }
    counted[s]! -= span;
    this.segLive[s]! -= span;
    this.c.disk_live_bytes -= span;
    return true;
  }

  private damaged(s: number, r: CleanResult, why: string): CleanResult {
    this.segDamaged[s] = 1;
    this.events('error', 'cleaner: segment unreadable, left as it is (its objects read as EIO)', { path: this.path, segment: s, why });
    r.outcome = 'damaged';
    return r;
  }

  whenWritable(): Promise<void> {
    if (this.closed) return Promise.reject(new ZdedupError('ERR_CLOSED', 'disk tier is closed'));
    return new Promise((resolve) => { this.waiters.push(resolve); });
  }

  private wake(): void {
    if (this.waiters.length === 0) return;
    for (const w of this.waiters.splice(0)) w();
  }

  // ---------------------------------------------------------------------------------------------
  // Durable mode: adopting what recovery found

  /**
   * Recovery found a live record of `span` bytes at the start-relative offset of segment s whose
   * records end at `used` (the end of its last valid record). Call for every live object, journal
   * and checkpoint record, then adoptDone(). Only on a fresh tier (nothing appended yet).
   */
  adoptRecord(s: number, used: number, span: number, kind = -1, seq = 0, gen = 0): void {
    if (this.segState[s] === FREE) {
      this.segState[s] = SEALED;
      this.segUsed[s] = used;
      this.segWrittenTo[s] = used;
      this.segWritten[s] = 1;
      this.segSealed[s] = Date.now();
      this.inUse++;
      this.c.disk_used_bytes += used;
    }
    this.segLive[s]! += span;
    this.c.disk_live_bytes += span;
    if (kind >= 0) this.countMeta(s, kind, seq, gen, span);
  }

  /**
   * Durable mode: the sequence of the segment open now (the next one's when none is): every record
   * appended from now on lands in a segment with this sequence or a higher one (a checkpoint's watermark).
   */
  openSegmentSeq(): number {
    return this.cur >= 0 ? this.bufs[this.cur]!.readUInt32LE(24) + this.bufs[this.cur]!.readUInt32LE(28) * 2 ** 32 : this.seq;
  }

  /** True when something was adopted into segment s (recovery). */
  segmentInUse(s: number): boolean {
    return this.segState[s] !== FREE;
  }

  /**
   * Ends adoption: the free stacks hold the segments nothing was adopted into; `ckpt*`: the
   * checkpoint recovery used. Journal and checkpoint records it makes dead are uncounted (a segment
   * left with nothing live is freed after the first sync).
   */
  adoptDone(ckptGen: number, ckptSeq: number, maxSegSeq: number): void {
    this.seq = Math.max(this.seq, maxSegSeq + 1);
    this.freshCount = 0;
    this.freeWritten = 0;
    for (let s = this.segmentCount - 1; s >= 0; s--) if (this.segState[s] === FREE) this.freshSegs[this.freshCount++] = s;
    this.ckptDone(ckptGen, ckptSeq);
  }

  /** fdatasyncs done by sync() (durable mode). */
  get syncCount(): number {
    return this.c.disk_syncs;
  }

  /** Durable mode's state for fsck and tests: the checkpoint the tier counts from. */
  checkpointState(): { gen: number; seq: number } {
    return { gen: this.ckptGen, seq: this.ckptSeq };
  }

  // ---------------------------------------------------------------------------------------------
  // Stats, tests, closing

  stats(): TierStats {
    const used = this.inUse;
    return {
      backing_size: this.backingSize,
      disk_bytes: this.c.disk_used_bytes,
      disk_live_bytes: this.c.disk_live_bytes,
      disk_segments: used,
      disk_free_segments: this.freeCount,
      disk_bytes_written: this.c.disk_bytes_written,
      disk_record_bytes_appended: this.c.disk_record_bytes_appended,
      disk_cleaner_bytes_moved: this.c.disk_cleaner_bytes_moved,
      write_amplification: this.c.disk_new_bytes_written > 0 ? this.c.disk_bytes_written / this.c.disk_new_bytes_written : 1,
      cleaned_segments: this.c.cleaned_segments,
      disk_write_errors: this.c.disk_write_errors,
      disk_read_errors: this.c.disk_read_errors,
      disk_reads: this.c.disk_reads,
      ...NO_REMOTE_STATS,
    };
  }

  /** Test hook: flips a payload byte of the record at (w0, w1), in its buffer or on the medium. */
  corruptForTest(w0: number, w1: number): void {
    const b = this.segBuf[w0]!;
    if (b >= 0) { this.bufs[b]![w1 + REC_HEADER_SIZE]! ^= 0x5a; return; }
    const pos = this.segPos(w0) + w1;
    const start = pos - (pos % ALIGN);
    const rb = alignedBuffer(2 * ALIGN);
    fs.readSync(this.fd, rb, 0, 2 * ALIGN, start);
    rb[pos - start + REC_HEADER_SIZE]! ^= 0x5a;
    fs.writeSync(this.fd, rb, 0, 2 * ALIGN, start);
  }

  /** White-box check: live and used bytes agree with the per-segment columns. */
  checkInvariants(): void {
    let live = 0, used = 0;
    for (let s = 0; s < this.segmentCount; s++) {
      const st = this.segState[s]!;
      if (st === FREE || st === FREEING || st === PENDING) {
        if (this.segLive[s] !== 0 && st === FREE) throw new Error(`free segment ${s} has live bytes`);
        continue;
      }
      live += this.segLive[s]!;
      used += this.segUsed[s]!;
      if (this.segLive[s]! > this.segUsed[s]!) throw new Error(`segment ${s}: live ${this.segLive[s]} > used ${this.segUsed[s]}`);
      if ((this.segBuf[s]! >= 0) !== (st === OPEN || st === WRITING || st === STRANDED)) throw new Error(`segment ${s}: buffer and state ${STATE_NAMES[st]} disagree`);
    }
    let inUse = 0;
    for (let s = 0; s < this.segmentCount; s++) if (this.segState[s] !== FREE) inUse++;
    if (inUse !== this.inUse) throw new Error(`segments in use ${this.inUse} != ${inUse}`);
    if (inUse + this.freeCount !== this.segmentCount) throw new Error(`in use ${inUse} + free ${this.freeCount} != ${this.segmentCount}`);
    if (live !== this.c.disk_live_bytes) throw new Error(`disk_live_bytes ${this.c.disk_live_bytes} != ${live}`);
    if (used !== this.c.disk_used_bytes) throw new Error(`disk_bytes ${this.c.disk_used_bytes} != ${used}`);
  }

  /** Durable mode, tests: byte offset in the backing just past what the last sync put on the medium in the open segment (0 if none). */
  durableEndForTest(): number {
    return this.cur >= 0 ? this.segPos(this.curSeg) + this.segWrittenTo[this.curSeg]! : 0;
  }

  /** Live bytes the tier holds for segment s (white-box tests). */
  segmentLive(s: number): number { return this.segLive[s]!; }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.writesInFlight > 0) await new Promise<void>((r) => { this.idleResolvers.push(r); });
    for (const w of this.waiters.splice(0)) w();
    fs.closeSync(this.fd);
  }

  private segPos(s: number): number {
    return FILE_HEADER_SIZE + s * this.segmentSize;
  }
}

/** Refuses (closing fd) a backing whose first block is neither zeroes nor a zdedup file header. */
function checkOurs(fd: number, path: string): void {
  const b = alignedBuffer(FILE_HEADER_SIZE);
  let n: number;
  try {
    n = fs.readSync(fd, b, 0, FILE_HEADER_SIZE, 0);
  } catch (e) {
    fs.closeSync(fd);
    throw new ZdedupError('ERR_IO', `cannot read the start of backing ${path}: ${(e as Error).message}`, { cause: e });
  }
  const head = b.subarray(0, n);
  if (head.every((x) => x === 0) || (n >= 4 && head.readUInt32LE(0) === FILE_MAGIC)) return;
  fs.closeSync(fd);
  throw new ZdedupError('ERR_INVALID_ARGUMENT',
    `backing ${path} holds other data (no zdedup header and not zeroes): refusing to overwrite it; pass --backing-overwrite if it is really meant to be used`);
}

/** The durable file header of the backing at `path`, or null (missing file, no header, not durable). */
export function durableHeaderOf(path: string): FileHeader | null {
  let fd: number;
  try { fd = fs.openSync(path, 'r'); } catch { return null; }
  try {
    const b = Buffer.alloc(FILE_HEADER_SIZE);
    const n = fs.readSync(fd, b, 0, FILE_HEADER_SIZE, 0);
    if (n < FILE_HEADER_SIZE) return null;
    const h = decodeFileHeader(b);
    return h !== null && h.durable ? h : null;
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Opens (creating or resizing a file as asked) with O_DIRECT when wanted and possible. `keep`: the
 * size a durable header records; a file found shorter (cut) is extended back to it with zeroes.
 */
function openBacking(path: string, size: number | undefined, direct: boolean, keep?: number): { fd: number; size: number; direct: boolean; existed: boolean } {
  const C = fs.constants;
  let st: fs.Stats | undefined;
  try { st = fs.statSync(path); } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new ZdedupError('ERR_IO', `cannot stat backing ${path}: ${(e as Error).message}`, { cause: e });
  }
  if (st === undefined && size === undefined) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', `backing ${path} does not exist: give its size (--backing-size) to create it`);
  }
  if (st !== undefined && !st.isFile() && !st.isBlockDevice()) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', `backing ${path} is neither a regular file nor a block device`);
  }
  const flags = C.O_RDWR | C.O_CREAT; // libuv adds O_CLOEXEC itself
  let fd: number;
  let isDirect = false;
  try {
    if (direct) {
      try {
        fd = fs.openSync(path, flags | C.O_DIRECT, 0o600);
        isDirect = true;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
        fd = fs.openSync(path, flags, 0o600);
      }
    } else {
      fd = fs.openSync(path, flags, 0o600);
    }
  } catch (e) {
    throw new ZdedupError('ERR_IO', `cannot open backing ${path}: ${(e as Error).message}`, { cause: e });
  }
  let bytes: number;
  if (st?.isBlockDevice() === true) {
    bytes = deviceOrFileSize(fd);
  } else {
    if (size !== undefined && (st === undefined || st.size !== size)) {
      try { fs.ftruncateSync(fd, size); } catch (e) {
        fs.closeSync(fd);
        throw new ZdedupError('ERR_IO', `cannot size backing ${path} to ${size} bytes: ${(e as Error).message}`, { cause: e });
      }
    }
    bytes = size ?? st!.size;
    if (keep !== undefined) {
      if (st!.size < keep) {
        try { fs.ftruncateSync(fd, keep); } catch (e) {
          fs.closeSync(fd);
          throw new ZdedupError('ERR_IO', `cannot extend backing ${path} back to ${keep} bytes: ${(e as Error).message}`, { cause: e });
        }
      }
      bytes = keep;
    }
  }
  return { fd, size: bytes, direct: isDirect, existed: st !== undefined && (st.isBlockDevice() || st.size > 0) };
}
