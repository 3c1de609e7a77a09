/**
 * Durable mode's start: rebuild the store from the log (the disk tier's segments).
 *
 *   scanBacking (tiers/disk/recovery.ts): every record of every segment, checked
 *        │  objects by serial, journal records, checkpoint chunks, damage, torn tail
 *        ▼
 *   pick the newest complete checkpoint (an end record + all its chunks) -> sequence C
 *        ▼
 *   slot state = checkpoint chunks, then journal records with sequence > C in sequence order
 *        ▼
 *   each slot: hole / same-filled word / object serial -> the store adopts it (objects created
 *   once per serial, refcounted per slot, put in the dedup index: dedup survives a restart)
 *        ▼
 *   the tier adopts every live record (objects referenced, journal > C, the checkpoint used);
 *   segments holding nothing live are free
 *
 * A slot naming a serial the scan did not find (its record rotted or was never written) becomes
 * a lost object: reads of it fail with EIO, never return data; recovery reports how many.
 */
import { ZdedupError } from '../../errors.js';
import type { DiskTier } from '../../tiers/disk/disk-tier.js';
import {
  KIND_CKPT_CHUNK, KIND_CKPT_END, KIND_JOURNAL, OBJECT_ENTRY, RUN_HEADER, SLOT_VALUE, TAG_HOLE, TAG_OBJECT, TAG_SAME, recordSpan, type FileHeader,
} from '../../tiers/disk/format.js';
import { kindName, scanBacking, type Damage, type MetaFound } from '../../tiers/disk/recovery.js';

/** What recovery needs from the store. */
export interface RestoreHost {
  /** Slot count of area `a` as persisted. */
  areaPages(a: number): number;
  setSame(area: number, slot: number, lo: number, hi: number): void;
  /** Creates an object found in the log (or a lost one: seg = LOST), refs 0; returns its id. */
  newObject(area: number, serial: number, seg: number, off: number, len: number, fpLo: number, fpHi: number, lost: boolean): number;
  setObject(area: number, slot: number, id: number): void;
}

export interface RecoveryReport {
  recovery_seconds: number;
  recovered_pages: number;
  recovery_discarded_bytes: number;
  /** Slots whose object could not be found or read back (they read as EIO). */
  recovery_lost_pages: number;
  /** Damaged places in the middle of the log (bit rot), reported. */
  recovery_damaged_records: number;
  records: number;
  bytes_read: number;
  checkpoint_generation: number;
  checkpoint_sequence: number;
  journal_records_replayed: number;
  damage: Damage[];
  /** Where the journal, checkpoints and serials go on from. */
  seq: number;
  gen: number;
  serial: number;
}

/** Slot tag for "a damaged journal record changed this slot": it reads as EIO. */
const TAG_LOST = 255;

/**
 * `acceptLoss` (fsck --repair): a damaged journal record whose pages cannot be told (a gap in the
 * sequence, a run header that fails) is dropped — the pages it changed keep their previous
 * content — instead of refusing to start.
 */
export function recoverStore(tier: DiskTier, header: FileHeader, areas: number, host: RestoreHost, acceptLoss = false, scanAll = false): RecoveryReport {
  const t0 = performance.now();
  const scan = scanBacking(tier.fd, header, !scanAll);

  // ---- the newest complete checkpoint ----
  const byGen = new Map<number, { seq: number; end: MetaFound | null; chunks: Map<number, MetaFound> }>();
  for (const m of scan.meta) {
    if (m.kind === KIND_JOURNAL || m.damaged) continue; // a damaged chunk leaves its checkpoint incomplete
    let g = byGen.get(m.gen);
    if (g === undefined) { g = { seq: m.seq, end: null, chunks: new Map() }; byGen.set(m.gen, g); }
    if (m.kind === KIND_CKPT_END) g.end = m;
    else g.chunks.set(m.aux, m); // slot chunks and object-table chunks share the index space
  }
  let gen = 0, C = 0;
  for (const [g, v] of [...byGen].sort((a, b) => b[0] - a[0])) {
    if (v.end === null) continue;
    let complete = true;
    for (let i = 0; i < v.end.aux; i++) if (!v.chunks.has(i)) { complete = false; break; }
    if (complete) { gen = g; C = v.seq; break; }
  }

  // ---- slot state: tag + 64-bit value per slot (temporary, 9 B per slot) ----
  const tags: Uint8Array[] = [], los: Uint32Array[] = [], his: Uint32Array[] = [];
  for (let a = 0; a < areas; a++) {
    const n = host.areaPages(a);
    tags.push(new Uint8Array(n)); los.push(new Uint32Array(n)); his.push(new Uint32Array(n));
  }
  const damage = scan.damage;
  const unattributable: string[] = [];
  /** Applies a record's runs; a damaged record marks the slots of its runs lost (EIO) instead. */
  const apply = (m: MetaFound): void => {
    const p = m.payload;
    // First check every run header, so a damaged record is applied all or nothing.
    for (let at = 0; at < p.length;) {
      const a = at + RUN_HEADER <= p.length ? p.readUInt32LE(at) : -1;
      const first = a >= 0 ? p.readUInt32LE(at + 4) : 0, count = a >= 0 ? p.readUInt32LE(at + 8) : 0;
      if (a < 0 || a >= areas || first + count > tags[a]!.length || at + RUN_HEADER + count * SLOT_VALUE > p.length) {
        unattributable.push(`${kindName(m.kind)} record ${m.seq} (segment ${m.seg}): the slots it changed cannot be told`);
        return;
      }
      at += RUN_HEADER + count * SLOT_VALUE;
    }
    const u = words(p);
    for (let w = 0; w < u.length;) {
      const a = u[w]!, first = u[w + 1]!, count = u[w + 2]!;
      w += RUN_HEADER / 4;
      const tg = tags[a]!, lo = los[a]!, hi = his[a]!;
      for (let i = 0; i < count; i++, w += SLOT_VALUE / 4) {
        tg[first + i] = m.damaged ? TAG_LOST : u[w]!;
        lo[first + i] = u[w + 1]!;
        hi[first + i] = u[w + 2]!;
      }
    }
  };
  if (gen !== 0) {
    for (const c of byGen.get(gen)!.chunks.values()) {
      if (c.kind === KIND_CKPT_CHUNK) { apply(c); continue; }
      // The checkpoint's object table: where each object was at C. A copy the scan found (a
      // segment written since, e.g. by the cleaner) wins; the rest stand for segments not read.
      const p = words(c.payload);
      for (let at = 0; at + OBJECT_ENTRY / 4 <= p.length; at += OBJECT_ENTRY / 4) {
        const serial = p[at]! + p[at + 1]! * 2 ** 32;
        if (serial > scan.maxSerial) scan.maxSerial = serial;
        // A segment the scan read and did not find the object in: its record is damaged (lost).
        const seg = p[at + 2]!;
        if (scan.serialIndex.has(serial) || (seg < scan.scanned.length && scan.scanned[seg] === 1)) continue;
        scan.serialIndex.set(serial, scan.objSerial.length);
        scan.objSerial.push(serial); scan.objSeg.push(seg); scan.objOff.push(p[at + 3]!);
        scan.objLen.push(p[at + 4]!); scan.objFpLo.push(p[at + 5]!); scan.objFpHi.push(p[at + 6]!);
        scan.objSegSeq.push(0); scan.objBad.push(0);
      }
    }
  }
  // Journal records after the checkpoint, in sequence order; of two copies (the cleaner's) the sound one.
  const journal = scan.meta.filter((m) => m.kind === KIND_JOURNAL && m.seq > C)
    .sort((a, b) => a.seq - b.seq || Number(a.damaged) - Number(b.damaged));
  let replayed = 0;
  let expect = C + 1;
  for (let i = 0; i < journal.length; i++) {
    const m = journal[i]!;
    if (i > 0 && m.seq === journal[i - 1]!.seq) continue;
    // Sequences after the checkpoint are contiguous: a gap is a record whose header rotted.
    if (m.seq !== expect) unattributable.push(`journal records ${expect}..${m.seq - 1} are missing (damaged beyond recognition)`);
    expect = m.seq + 1;
    apply(m);
    replayed++;
  }
  if (unattributable.length > 0 && !acceptLoss) {
    throw new ZdedupError('ERR_CORRUPT', `backing ${tier.path}: ${unattributable[0]}${unattributable.length > 1 ? ` (and ${unattributable.length - 1} more)` : ''}; ` +
      'refusing to guess which pages it held. Run zdedup fsck --backing PATH --repair to accept the loss (those pages keep their previous content)');
  }
  for (const u of unattributable) damage.push({ seg: -1, off: 0, bytes: 0, why: `${u} (accepted by --repair)` });

  // ---- the store adopts the slots; objects are created once per serial ----
  const ids = new Int32Array(scan.objSerial.length).fill(-1);
  const lostIds = new Map<number, number>(); // serial -> id of its lost object (rare)
  let pages = 0, lost = 0;
  for (let a = 0; a < areas; a++) {
    const tg = tags[a]!, lo = los[a]!, hi = his[a]!;
    for (let s = 0; s < tg.length; s++) {
      const tag = tg[s]!;
      if (tag === TAG_HOLE) continue;
      pages++;
      if (tag === TAG_SAME) { host.setSame(a, s, lo[s]!, hi[s]!); continue; }
      // A slot a damaged journal record changed, or an unknown tag: a lost object (serial 0).
      const serial = tag === TAG_OBJECT ? lo[s]! + hi[s]! * 2 ** 32 : 0;
      let i = serial === 0 ? undefined : scan.serialIndex.get(serial);
      if (i !== undefined && scan.objSeg[i]! >= tier.segmentCount) i = undefined; // lost before the checkpoint, still lost
      let id: number;
      if (i === undefined) {
        lost++;
        id = lostIds.get(serial) ?? -1;
        if (id < 0) { id = host.newObject(a, serial, 0, 0, 0, 0, 0, true); lostIds.set(serial, id); }
      } else {
        if (scan.objBad[i] === 1) lost++;
        id = ids[i]!;
        if (id < 0) {
          id = host.newObject(a, serial, scan.objSeg[i]!, scan.objOff[i]!, scan.objLen[i]!, scan.objFpLo[i]!, scan.objFpHi[i]!, false);
          ids[i] = id;
          tier.adoptRecord(scan.objSeg[i]!, scan.segUsed[scan.objSeg[i]!]!, recordSpan(scan.objLen[i]!));
        }
      }
      host.setObject(a, s, id);
    }
  }
  // ---- the tier adopts the journal and checkpoint records of segments in use ----
  // All of them are counted (the cleaner subtracts what it walks), then adoptDone uncounts what
  // the checkpoint made dead, exactly as a checkpoint written by this process would.
  const isLive = (m: MetaFound): boolean => (m.kind === KIND_JOURNAL ? m.seq > C : m.gen >= gen && gen !== 0);
  for (const m of scan.meta) if (isLive(m)) tier.adoptRecord(m.seg, scan.segUsed[m.seg]!, m.span, m.kind, m.seq, m.gen);
  for (const m of scan.meta) if (!isLive(m) && tier.segmentInUse(m.seg)) tier.adoptRecord(m.seg, scan.segUsed[m.seg]!, m.span, m.kind, m.seq, m.gen);
  tier.adoptDone(gen, C, scan.maxSegSeq);
  return {
    recovery_seconds: (performance.now() - t0) / 1000,
    recovered_pages: pages,
    recovery_discarded_bytes: scan.discardedBytes,
    recovery_lost_pages: lost,
    recovery_damaged_records: damage.length,
    records: scan.records,
    bytes_read: scan.bytesRead,
    checkpoint_generation: gen,
    checkpoint_sequence: C,
    journal_records_replayed: replayed,
    damage,
    seq: Math.max(scan.maxJournalSeq, C),
    gen: scan.maxGen,
    serial: scan.maxSerial,
  };
}

/** A payload as little-endian u32 words (copied into an aligned array; the host is little-endian, as Node's are). */
function words(p: Buffer): Uint32Array {
  const u = new Uint32Array(p.length >>> 2);
  new Uint8Array(u.buffer).set(p.subarray(0, u.length * 4));
  return u;
}
