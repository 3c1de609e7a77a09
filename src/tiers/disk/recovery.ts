/**
 * Recovery's (and fsck's) forward scan of a durable backing: every segment is read whole and its
 * records walked from offset 64. Each record checks itself (magic, header CRC, payload CRC), so
 * the scan needs nothing else from the medium: segment headers are informative only.
 *
 *   segment:  | hdr | rec | rec | rec | ??? garbage ??? | rec | rec | torn |  stale / zeroes  |
 *             |<------------------------- header's `used` ------------------->|
 *                                    ^ a record fails: resynchronise, 8 bytes at a time, until
 *                                      the next valid record (bit rot: reported as damage)
 *             failed bytes with no valid record after them up to `used` are the torn end of the
 *             write under way at the crash (discarded, counted); bytes past `used` are ignored
 *
 * What a record found means does not depend on where or when it was found (which is why stale
 * records of a reused segment's earlier life, or two copies of one record left by the cleaner,
 * are harmless):
 * - an object record with serial S: "object S has these bytes" (serials are never reused, so all
 *   valid copies of S are the same bytes);
 * - a journal record with sequence Q: "after update Q, these slots hold these values";
 * - a checkpoint chunk of generation G covering sequence C: "at C, these slots held these values".
 * Known limit: resynchronising after a damaged record could land on bytes inside a raw (stored
 * uncompressed) page payload that a client crafted to look like a record; only a damaged record
 * right before it makes the scan look there.
 */
import fs from 'node:fs';
import { alignedBuffer } from './aligned.js';
import {
  ALIGN, FILE_HEADER_SIZE, KIND_CKPT_CHUNK, KIND_CKPT_END, KIND_CKPT_OBJECTS, KIND_JOURNAL, REC_HEADER_SIZE, REC_MAGIC, SEG_HEADER_SIZE,
  alignUp, checkPayload, checkSegHeader, isMetaKind, readRecordHeader, recordSpan, type FileHeader, type RecordView,
} from './format.js';

/**
 * Serial -> index of the object columns, as open addressing over typed arrays (a Map keyed by
 * serials, which are not small integers once above 2^30, costs ~1 µs an operation here).
 */
export class SerialIndex {
  private keys = new Float64Array(1024);
  private vals = new Int32Array(1024).fill(-1);
  private mask = 1023;
  size = 0;

  private slot(serial: number): number {
    const lo = serial >>> 0, hi = Math.floor(serial / 2 ** 32);
    let i = Math.imul(lo ^ Math.imul(hi, 0x85ebca6b), 0x9e3779b1) & this.mask;
    while (this.vals[i] !== -1 && this.keys[i] !== serial) i = (i + 1) & this.mask;
    return i;
  }

  /** The index stored for `serial`, or undefined. */
  get(serial: number): number | undefined {
    const v = this.vals[this.slot(serial)]!;
    return v === -1 ? undefined : v;
  }

  has(serial: number): boolean {
    return this.vals[this.slot(serial)] !== -1;
  }

  set(serial: number, v: number): void {
    if ((this.size + 1) * 2 > this.keys.length) this.grow();
    const i = this.slot(serial);
    if (this.vals[i] === -1) this.size++;
    this.keys[i] = serial;
    this.vals[i] = v;
  }

  private grow(): void {
    const k = this.keys, v = this.vals;
    this.keys = new Float64Array(k.length * 2);
    this.vals = new Int32Array(k.length * 2).fill(-1);
    this.mask = this.keys.length - 1;
    this.size = 0;
    for (let i = 0; i < k.length; i++) if (v[i] !== -1) this.set(k[i]!, v[i]!);
  }
}

/** A journal or checkpoint record found by the scan (one per record, never per page). */
export interface MetaFound {
  kind: number;
  seq: number;
  aux: number;
  gen: number;
  seg: number;
  span: number;
  /** The payload failed its CRC (the header is sound, so kind and sequence are known). */
  damaged: boolean;
  payload: Buffer;
}

/** A damaged place found by the scan. */
export interface Damage {
  seg: number;
  off: number;
  bytes: number;
  why: string;
}

export interface ScanResult {
  /** Objects, one entry per serial (the newest segment's copy), as parallel columns. */
  serialIndex: SerialIndex;
  objSerial: number[];
  objSeg: number[];
  objOff: number[];
  objLen: number[];
  objFpLo: number[];
  objFpHi: number[];
  objSegSeq: number[];
  /** 1 when the payload failed its CRC (the object reads as EIO; reported). */
  objBad: number[];
  meta: MetaFound[];
  /** End of the last valid record of each segment (0: none). */
  segUsed: Uint32Array;
  maxSegSeq: number;
  maxSerial: number;
  maxJournalSeq: number;
  maxGen: number;
  records: number;
  /** Bytes of torn records at the end of what a segment held (the write under way at a crash). */
  discardedBytes: number;
  /** Records in the middle of a segment that failed (bit rot, or a torn write with valid records after it). */
  damage: Damage[];
  bytesRead: number;
  /** Segments read whole (the others were skipped: covered by the checkpoint the scan stopped at). */
  segmentsScanned: number;
  /** 1 for each segment read whole. */
  scanned: Uint8Array;
}

const DAMAGE_LIST_MAX = 1000;

/**
 * Scans a durable backing open at `fd` (O_DIRECT or not: the buffers and offsets are aligned).
 * Synchronous: it runs at start, before anything is served, and in fsck.
 *
 * First every segment's header (one 4 KiB read each: its sequence and `used`), then the segments
 * themselves, newest first (unreadable headers first of all). `untilCheckpoint` (recovery): stop
 * once a complete checkpoint has been found and every segment at or above its watermark read:
 * the checkpoint's object table stands for the rest, which is not read at all (its records are
 * checked when they are read, and by fsck, which scans everything); and check object payloads
 * only where a torn tail can be.
 */
export function scanBacking(fd: number, h: FileHeader, untilCheckpoint = false): ScanResult {
  // Recovery checks object payloads only in the two newest segments, where a torn tail can be (a
  // payload cut short must not be taken for data); older ones are checked on every read and by
  // fsck (untilCheckpoint false: every payload). Journal and checkpoint payloads are always checked.
  const SEG = h.segmentSize;
  const r: ScanResult = {
    serialIndex: new SerialIndex(), objSerial: [], objSeg: [], objOff: [], objLen: [], objFpLo: [], objFpHi: [], objSegSeq: [], objBad: [],
    meta: [], segUsed: new Uint32Array(h.segmentCount), maxSegSeq: 0, maxSerial: 0, maxJournalSeq: 0, maxGen: 0, records: 0,
    discardedBytes: 0, damage: [], bytesRead: 0, segmentsScanned: 0, scanned: new Uint8Array(h.segmentCount),
  };
  const b = alignedBuffer(SEG);
  const tails: { seg: number; segSeq: number; at: number; bytes: number; record: Buffer | null }[] = [];
  const rv: RecordView = { codec: 0, len: 0, id: 0, fpLo: 0, fpHi: 0, serial: 0 };
  // ---- pass 1: headers ----
  const hdrUsed = new Int32Array(h.segmentCount);  // -1: no valid header
  const hdrSeq = new Float64Array(h.segmentCount);
  const order: number[] = [];
  const blank: number[] = [];
  for (let s = 0; s < h.segmentCount; s++) {
    let n = 0;
    try { n = fs.readSync(fd, b, 0, ALIGN, FILE_HEADER_SIZE + s * SEG); } catch { /* read again (and reported) below */ }
    r.bytesRead += n;
    if (n < ALIGN) b.fill(0, n, ALIGN);
    hdrUsed[s] = checkSegHeader(b, s, SEG);
    if (hdrUsed[s]! >= 0) {
      hdrSeq[s] = b.readUInt32LE(24) + b.readUInt32LE(28) * 2 ** 32;
      if (hdrSeq[s]! > r.maxSegSeq) r.maxSegSeq = hdrSeq[s]!;
      order.push(s);
    } else if (b.readUInt32LE(0) !== 0 || b.readUInt32LE(60) !== 0) {
      blank.push(-1 - s); // a damaged header: scanned first, whole
    }
  }
  order.sort((x, y) => hdrSeq[y]! - hdrSeq[x]!);
  const ckpts = new Map<number, { wm: number; count: number; found: Set<number> }>();
  const ckptReady = (nextSeq: number): boolean => {
    for (const c of ckpts.values()) if (c.count >= 0 && c.found.size === c.count && c.wm > nextSeq) return true;
    return false;
  };
  const metaBefore = (): number => r.meta.length;
  // ---- pass 2: segments ----
  const todo = [...blank.map((x) => -1 - x), ...order];
  for (let k = 0; k < todo.length; k++) {
    const s = todo[k]!;
    if (untilCheckpoint && k >= blank.length && ckptReady(hdrSeq[s]!)) {
      for (let j = k; j < todo.length; j++) r.segUsed[todo[j]!] = hdrUsed[todo[j]!]!; // covered by the checkpoint
      break;
    }
    const pos = FILE_HEADER_SIZE + s * SEG;
    const m0 = metaBefore();
    let n: number;
    try {
      const used = hdrUsed[s]!;
      const want = used >= 0 ? alignUp(used) : SEG;
      n = fs.readSync(fd, b, 0, want, pos);
      if (n < want) b.fill(0, n, want); // a cut file reads short: the rest is as if never written
    } catch (e) {
      addDamage(r, { seg: s, off: 0, bytes: SEG, why: `read failed: ${(e as Error).message}` });
      continue;
    }
    r.bytesRead += n;
    r.segmentsScanned++;
    r.scanned[s] = 1;
    // The header bounds the walk: durable mode rewrites it after each write of the segment's
    // records, so records past its `used` are either stale (an earlier life of the segment) or
    // from a write whose sync never completed; both are ignored.
    let limit = hdrUsed[s]!;
    const segSeq = limit >= 0 ? hdrSeq[s]! : 0;
    if (limit < 0) {
      addDamage(r, { seg: s, off: 0, bytes: SEG_HEADER_SIZE, why: 'segment header fails its checks; records are walked to the end of the segment' });
      limit = SEG;
    }
    let at = SEG_HEADER_SIZE;
    let lastEnd = 0;
    let badAt = -1;  // start of a run of bytes that are not a valid record
    let pendAt = -1; // a record whose payload failed: damage if a valid record follows, else the torn tail
    while (at + REC_HEADER_SIZE <= limit) {
      if (b[at] !== (REC_MAGIC & 0xff) || b[at + 1] !== REC_MAGIC >>> 8 || !readRecordHeader(b, at, limit, rv)) {
        if (badAt < 0) badAt = at;
        at += 8;
        continue;
      }
      const span = recordSpan(rv.len);
      const ok = (!untilCheckpoint || isMetaKind(rv.codec) || segSeq + 1 >= r.maxSegSeq || limit === SEG) ? checkPayload(b, at, rv.len) : true;
      if (pendAt >= 0 || badAt >= 0) {
        // Something failed, yet a valid record follows: damage in the middle of the log (bit rot).
        if (pendAt >= 0) { readRecordHeader(b, pendAt, limit, rv); take(r, b, pendAt, s, pendAt, segSeq, rv, false); readRecordHeader(b, at, limit, rv); }
        if (badAt >= 0) addDamage(r, { seg: s, off: badAt, bytes: at - badAt, why: 'bytes between records fail their checks' });
        pendAt = -1;
        badAt = -1;
      }
      if (ok) take(r, b, at, s, at, segSeq, rv, true);
      else pendAt = at;
      lastEnd = at + span;
      at += span;
    }
    r.segUsed[s] = lastEnd;
    // Nothing valid after a failed record up to `used`: in the newest segments, the torn end of
    // the write under way at the crash (or of a cut file), discarded as if never written; in an
    // older one, damage (decided once every header's sequence is known).
    const tornAt = pendAt >= 0 ? pendAt : badAt;
    if (tornAt >= 0) {
      tails.push({
        seg: s, segSeq, at: tornAt, bytes: Math.max(0, lastNonZero(b, tornAt, limit) - tornAt),
        record: pendAt >= 0 ? Buffer.from(b.subarray(pendAt, Math.min(limit, pendAt + recordSpan(readLen(b, pendAt))))) : null,
      });
    }
    for (let i = m0; i < r.meta.length; i++) {
      const m = r.meta[i]!;
      if (m.kind === KIND_JOURNAL || m.damaged) continue;
      let c = ckpts.get(m.gen);
      if (c === undefined) { c = { wm: Infinity, count: -1, found: new Set() }; ckpts.set(m.gen, c); }
      if (m.kind === KIND_CKPT_END) {
        c.count = m.aux;
        if (m.payload.length >= 8) c.wm = m.payload.readUInt32LE(0) + m.payload.readUInt32LE(4) * 2 ** 32;
      } else {
        c.found.add(m.aux);
      }
    }
  }
  for (const t of tails) {
    if (t.segSeq >= r.maxSegSeq - 1) {
      r.discardedBytes += t.bytes;
      if (t.record !== null) r.segUsed[t.seg] = t.at;
    } else if (t.record !== null && readRecordHeader(t.record, 0, t.record.length, rv)) {
      take(r, t.record, 0, t.seg, t.at, t.segSeq, rv, false);
    } else {
      addDamage(r, { seg: t.seg, off: t.at, bytes: t.bytes, why: 'bytes at the end of an old segment fail their checks' });
    }
  }
  return r;
}

/** The payload length field of the record header at b[at..] (already checked by readRecordHeader). */
function readLen(b: Buffer, at: number): number {
  return b.readUInt32LE(at + 4);
}

/**
 * Registers the record at b[bAt..] (its header in rv), found at offset `at` of segment s: an
 * object copy, or a journal / checkpoint record.
 */
function take(r: ScanResult, b: Buffer, bAt: number, s: number, at: number, segSeq: number, rv: RecordView, ok: boolean): void {
  const span = recordSpan(rv.len);
  r.records++;
  if (isMetaKind(rv.codec)) {
    const seq = rv.id + rv.fpLo * 2 ** 32;
    const gen = rv.serial ?? 0;
    if (!ok) addDamage(r, { seg: s, off: at, bytes: span, why: `${kindName(rv.codec)} record ${seq} payload checksum mismatch` });
    // A damaged one is kept too (flagged): recovery makes the pages it changed read as EIO.
    r.meta.push({ kind: rv.codec, seq, aux: rv.fpHi, gen, seg: s, span, damaged: !ok, payload: Buffer.from(b.subarray(bAt + REC_HEADER_SIZE, bAt + REC_HEADER_SIZE + rv.len)) });
    if (rv.codec === KIND_JOURNAL && seq > r.maxJournalSeq) r.maxJournalSeq = seq;
    if (gen > r.maxGen) r.maxGen = gen;
    return;
  }
  const serial = rv.serial ?? 0;
  if (serial === 0) return; // not written in durable mode
  if (serial > r.maxSerial) r.maxSerial = serial;
  if (!ok) addDamage(r, { seg: s, off: at, bytes: span, why: `object ${serial} payload checksum mismatch` });
  const i = r.serialIndex.get(serial);
  // Keep the best copy: a valid one over a damaged one, then the newer segment's.
  if (i === undefined) {
    r.serialIndex.set(serial, r.objSerial.length);
    r.objSerial.push(serial); r.objSeg.push(s); r.objOff.push(at); r.objLen.push(rv.len);
    r.objFpLo.push(rv.fpLo); r.objFpHi.push(rv.fpHi); r.objSegSeq.push(segSeq); r.objBad.push(ok ? 0 : 1);
  } else if ((r.objBad[i] === 1 && ok) || (ok === (r.objBad[i] === 0) && segSeq > r.objSegSeq[i]!)) {
    r.objSeg[i] = s; r.objOff[i] = at; r.objLen[i] = rv.len; r.objSegSeq[i] = segSeq; r.objBad[i] = ok ? 0 : 1;
  }
}

export function kindName(k: number): string {
  return k === KIND_JOURNAL ? 'journal' : k === KIND_CKPT_CHUNK ? 'checkpoint' : k === KIND_CKPT_OBJECTS ? 'checkpoint objects' : k === KIND_CKPT_END ? 'checkpoint end' : `kind ${k}`;
}

function addDamage(r: ScanResult, d: Damage): void {
  if (r.damage.length < DAMAGE_LIST_MAX) r.damage.push(d);
}

/** End (exclusive, rounded up to 4 KiB) of the last non-zero byte of b[from, to), or `from`. */
function lastNonZero(b: Buffer, from: number, to: number): number {
  for (let blk = alignUp(to) - ALIGN; blk + ALIGN > from; blk -= ALIGN) {
    const lo = Math.max(blk, from);
    for (let i = Math.min(blk + ALIGN, to) - 1; i >= lo; i--) if (b[i] !== 0) return Math.min(blk + ALIGN, to);
  }
  return from;
}
