/**
 * The journal of durable mode: every change of a slot (store, dedup hit, same-filled page, zero,
 * trim) becomes an entry "slot -> value", and entries are appended to the disk tier's log as
 * journal records after the objects they name (every new object is appended at store time in
 * durable mode). FLUSH = drain the entries into the log, then the tier's sync() (one fdatasync
 * shared by every FLUSH that arrives meanwhile: group commit). Checkpoints write the whole slot
 * maps into the log so older journal records can be reclaimed and replay stays short.
 *
 *   note(area, slot) ─▶ stage (RAM, runs of consecutive slots) ─seal─▶ queue ─pump─▶ tier.appendMeta
 *                                                                   (waits when the tier is busy)
 *   flush(): seal + pump until the queue is empty, then tier.sync()
 *   checkpoint (every `checkpointBytes` of journal): slot maps -> chunk records + an end record;
 *   once all are in the log, tier.ckptDone() lets the cleaner forget journal records it covers
 *
 * Record payload (docs/FORMAT.md): runs of (u32 area, u32 first slot, u32 count, count x 12 B
 * values: u32 tag 0 hole / 1 same-filled word / 2 object serial, u32 lo, u32 hi).
 *
 * Invariants:
 * - Entries reach the log in the order they were noted, each record with the next sequence
 *   number; a value names an object whose record was appended before the entry was noted.
 * - The tier frees a segment only after a sync that began with the journal queue empty
 *   (syncBarrier), so a journal entry that replaces a reference always reaches the medium
 *   before the segment of the object it replaced can be overwritten.
 * - A checkpoint's values are encoded synchronously, at one point of the journal (its sequence C);
 *   entries noted after it get sequence numbers above C, so checkpoint + journal records > C is
 *   the state, whatever order the records reach the log in.
 */
import { ZdedupError } from '../../errors.js';
import type { DiskTier } from '../../tiers/disk/disk-tier.js';
import { KIND_CKPT_CHUNK, KIND_CKPT_END, KIND_CKPT_OBJECTS, KIND_JOURNAL, OBJECT_ENTRY, RUN_HEADER, SLOT_VALUE } from '../../tiers/disk/format.js';

/** What the journal needs from the store. */
export interface JournalHost {
  /** Writes the current value of (area, slot) as 12 bytes (tag, lo, hi) at dst[at..]. */
  encodeSlot(area: number, slot: number, dst: Buffer, at: number): void;
  /** Number of areas ever defined, and an area's slot count (0 when deleted). */
  areaCount(): number;
  areaPages(area: number): number;
  /** True when the slot holds nothing (checkpoints skip holes). */
  isHole(area: number, slot: number): boolean;
  /** The live objects as checkpoint entries (OBJECT_ENTRY bytes each: serial, segment, offset, length, fingerprint). */
  encodeObjects(): Buffer;
}

export interface JournalOptions {
  /** Journal bytes between checkpoints (at least twice the last checkpoint's size). Default 64 MiB. */
  checkpointBytes?: number;
  /** Record bytes appended between checkpoints (at least 16 times the last checkpoint's size). Default 1 GiB. */
  checkpointDataBytes?: number;
  /** The sequence, generation and object serial recovery ended at (0 for a new store). */
  seq?: number;
  gen?: number;
  events?: (level: 'info' | 'warn' | 'error', msg: string, fields: Record<string, unknown>) => void;
}

export const DEFAULT_CHECKPOINT_BYTES = 64 << 20;
/** Record bytes appended between checkpoints at most (before the size guard): bounds recovery's reading. */
const DATA_BETWEEN_CHECKPOINTS = 1 << 30;

export class Journal {
  /** Sequence number of the last journal record appended to the log. */
  seq: number;
  /** Generation of the last checkpoint started. */
  gen: number;
  /** Checkpoints completed, and journal records appended, by this process. */
  checkpoints = 0;
  records = 0;

  private stage: Buffer;
  private stageLen = 0;
  private runAt = -1;
  private runArea = -1;
  private runNext = -1;
  private readonly maxRecord: number;
  private queue: Buffer[] = [];
  private ckQueue: { kind: number; aux: number; payload: Buffer }[] = [];
  private ckGen = 0;
  private ckSeq = 0;
  private waiting = false;
  private bytesSinceCkpt = 0;
  private lastCkptBytes = 0;
  private appendedAtCkpt = 0;
  private readonly ckptEvery: number;
  private readonly ckptData: number;
  private readonly events: NonNullable<JournalOptions['events']>;
  private drainWaiters: { resolve: () => void; reject: (e: unknown) => void }[] = [];

  constructor(private readonly tier: DiskTier, private readonly host: JournalHost, o: JournalOptions = {}) {
    this.seq = o.seq ?? 0;
    this.gen = o.gen ?? 0;
    this.ckptEvery = o.checkpointBytes ?? DEFAULT_CHECKPOINT_BYTES;
    this.ckptData = o.checkpointDataBytes ?? DATA_BETWEEN_CHECKPOINTS;
    this.events = o.events ?? (() => {});
    // A record must fit a segment with room to spare (tests use 32 KiB segments).
    this.maxRecord = Math.max(4096, Math.min(256 << 10, Math.floor(tier.segmentSize / 4)));
    this.stage = Buffer.allocUnsafe(this.maxRecord);
    tier.syncBarrier = () => { this.sealStage(); this.pump(); return this.queue.length === 0; };
  }

  /** Notes that slot (area, slot) changed: its current value goes into the next journal record. */
  note(area: number, slot: number): void {
    if (this.stageLen + RUN_HEADER + SLOT_VALUE > this.maxRecord) { this.sealStage(); this.pump(); } // the RAM queue stays short
    const st = this.stage;
    if (this.runAt >= 0 && area === this.runArea && slot === this.runNext) {
      st.writeUInt32LE(st.readUInt32LE(this.runAt + 8) + 1, this.runAt + 8);
    } else {
      this.runAt = this.stageLen;
      this.runArea = area;
      st.writeUInt32LE(area, this.stageLen);
      st.writeUInt32LE(slot, this.stageLen + 4);
      st.writeUInt32LE(1, this.stageLen + 8);
      this.stageLen += RUN_HEADER;
    }
    this.host.encodeSlot(area, slot, st, this.stageLen);
    this.stageLen += SLOT_VALUE;
    this.runNext = slot + 1;
  }

  /** Notes `count` consecutive slots from `first`. */
  noteRange(area: number, first: number, count: number): void {
    for (let i = 0; i < count; i++) this.note(area, first + i);
  }

  /**
   * Resolves once every slot change noted before the call is on the medium (with the objects it
   * names). Concurrent calls share the tier's fdatasync. Rejects with ERR_IO when the log cannot
   * take the records (disk full, write errors).
   */
  async flush(): Promise<void> {
    this.sealStage();
    if (!this.pump()) await new Promise<void>((resolve, reject) => { this.drainWaiters.push({ resolve, reject }); });
    await this.tier.sync();
  }

  /** Moves the staged entries into the queue as one record. */
  private sealStage(): void {
    if (this.stageLen === 0) return;
    this.queue.push(Buffer.from(this.stage.subarray(0, this.stageLen)));
    this.stageLen = 0;
    this.runAt = -1;
    this.runNext = -1;
  }

  /**
   * Appends queued journal (then checkpoint) records to the log while it takes them. True when
   * the journal queue is empty; else it retries when the tier is writable again.
   */
  private pump(): boolean {
    while (this.queue.length > 0) {
      const p = this.queue[0]!;
      const r = this.tier.appendMeta(KIND_JOURNAL, this.seq + 1, 0, 0, p, p.length);
      if (r !== 'ok') return this.stalled(r);
      this.seq++;
      this.records++;
      this.queue.shift();
      this.bytesSinceCkpt += p.length;
    }
    for (const w of this.drainWaiters.splice(0)) w.resolve();
    while (this.ckQueue.length > 0) {
      const c = this.ckQueue[0]!;
      const r = this.tier.appendMeta(c.kind, this.ckSeq, c.aux, this.ckGen, c.payload, c.payload.length);
      if (r !== 'ok') { this.stalled(r); return true; }
      this.ckQueue.shift();
      if (this.ckQueue.length === 0) this.checkpointWritten();
    }
    if (this.ckGen === 0 && this.checkpointDue()) this.checkpoint();
    return true;
  }

  /**
   * A checkpoint is due after `checkpointBytes` of journal (it bounds the replay), or after
   * `checkpointDataBytes` (1 GiB) of records appended (it bounds the segments recovery reads: those since the last checkpoint);
   * never before twice (journal) or sixteen times (records) the last checkpoint's own size.
   */
  private checkpointDue(): boolean {
    if (this.bytesSinceCkpt >= Math.max(this.ckptEvery, 2 * this.lastCkptBytes)) return true;
    return this.tier.stats().disk_record_bytes_appended - this.appendedAtCkpt >= Math.max(this.ckptData, 16 * this.lastCkptBytes);
  }

  /** A clean stop: a checkpoint (so the next start reads little), written and synced. */
  async close(): Promise<void> {
    await this.flush();
    this.checkpoint();
    while (this.ckGen !== 0) {
      if (this.pump() && this.ckGen === 0) break;
      await this.tier.whenWritable();
    }
    await this.flush();
  }

  private stalled(r: string): boolean {
    if (r === 'full' || r === 'failed') {
      const e = new ZdedupError('ERR_IO', `the disk tier cannot take journal records (${r === 'full' ? 'no free space' : 'closed or failing'})`);
      for (const w of this.drainWaiters.splice(0)) w.reject(e);
      if (!this.waiting) {
        // Space may come back (released objects, cleaning): try again a little later.
        this.waiting = true;
        setTimeout(() => { this.waiting = false; this.pump(); }, 200).unref();
      }
      return false;
    }
    if (!this.waiting) {
      this.waiting = true;
      this.tier.whenWritable().then(() => { this.waiting = false; this.pump(); }, () => { this.waiting = false; });
    }
    return false;
  }

  /**
   * Starts a checkpoint: the whole slot maps at the current sequence, encoded now (synchronously,
   * so it is one point of the journal), appended as chunk records and an end record as the log
   * takes them. Called by pump() every `checkpointBytes` of journal; tests call it directly.
   */
  checkpoint(): void {
    if (this.ckGen !== 0) return; // one at a time
    this.sealStage();
    if (this.queue.length > 0) return; // the journal first (the checkpoint's C must cover every noted entry)
    const gen = ++this.gen;
    this.ckGen = gen;
    this.ckSeq = this.seq;
    this.tier.ckptStart(gen);
    const chunks: { kind: number; aux: number; payload: Buffer }[] = [];
    let buf = Buffer.allocUnsafe(this.maxRecord);
    let len = 0;
    let bytes = 0;
    const cut = (): void => {
      if (len === 0) return;
      chunks.push({ kind: KIND_CKPT_CHUNK, aux: chunks.length, payload: Buffer.from(buf.subarray(0, len)) });
      bytes += len;
      len = 0;
    };
    const h = this.host;
    for (let a = 0; a < h.areaCount(); a++) {
      const pages = h.areaPages(a);
      let runAt = -1;
      for (let s = 0; s < pages; s++) {
        if (h.isHole(a, s)) { runAt = -1; continue; }
        if (len + RUN_HEADER + SLOT_VALUE > this.maxRecord) { cut(); buf = Buffer.allocUnsafe(this.maxRecord); runAt = -1; }
        if (runAt < 0) {
          runAt = len;
          buf.writeUInt32LE(a, len); buf.writeUInt32LE(s, len + 4); buf.writeUInt32LE(0, len + 8);
          len += RUN_HEADER;
        }
        buf.writeUInt32LE(buf.readUInt32LE(runAt + 8) + 1, runAt + 8);
        h.encodeSlot(a, s, buf, len);
        len += SLOT_VALUE;
      }
    }
    cut();
    // The object table: recovery reads it instead of every segment older than the watermark.
    const objects = h.encodeObjects();
    const per = Math.floor(this.maxRecord / OBJECT_ENTRY) * OBJECT_ENTRY;
    for (let at = 0; at < objects.length; at += per) {
      chunks.push({ kind: KIND_CKPT_OBJECTS, aux: chunks.length, payload: objects.subarray(at, Math.min(objects.length, at + per)) });
      bytes += Math.min(per, objects.length - at);
    }
    const end = Buffer.alloc(8);
    const wm = this.tier.openSegmentSeq();
    end.writeUInt32LE(wm >>> 0, 0);
    end.writeUInt32LE(Math.floor(wm / 2 ** 32), 4);
    chunks.push({ kind: KIND_CKPT_END, aux: chunks.length, payload: end });
    this.lastCkptBytes = bytes;
    this.ckQueue = chunks;
    this.pump();
  }

  private checkpointWritten(): void {
    this.tier.ckptDone(this.ckGen, this.ckSeq);
    this.appendedAtCkpt = this.tier.stats().disk_record_bytes_appended;
    this.events('info', 'checkpoint written', { generation: this.ckGen, sequence: this.ckSeq, bytes: this.lastCkptBytes });
    this.ckGen = 0;
    this.bytesSinceCkpt = 0;
    this.checkpoints++;
  }

  /** True while a checkpoint is being appended. */
  get checkpointing(): boolean {
    return this.ckGen !== 0;
  }
}
