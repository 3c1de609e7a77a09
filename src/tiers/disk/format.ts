/**
 * The on-disk format of the disk tier (documented field by field in docs/FORMAT.md). All integers
 * are little-endian. Every structure carries a checksum (CRC-32, zlib's polynomial, computed by
 * Node's native zlib.crc32) so a torn or rotted write is detected, never returned as data.
 *
 *   backing file / device
 *   +----------------+------------------+------------------+-- ... --+------------------+
 *   | file header    | segment 0        | segment 1        |         | segment N-1      |
 *   | 4096 B         | SEG bytes        | SEG bytes        |         | SEG bytes        |
 *   +----------------+------------------+------------------+-- ... --+------------------+
 *
 *   segment: | header 64 B | record | record | ... | record | (unused tail) |
 *   record:  | header 32 B | payload (len B) | pad to 8 |
 *
 * Segments are written whole (header and records in one large write) when they are sealed; the
 * used part is rounded up to 4096 so the write is aligned for O_DIRECT.
 */
import { crc32 } from 'node:zlib';

export const FILE_MAGIC = 0x5a44_4446; // file header magic
export const SEG_MAGIC = 0x5a44_5347;  // segment header magic
export const REC_MAGIC = 0x5a52;       // record header magic
export const FORMAT_VERSION = 1;
export const FILE_HEADER_SIZE = 4096;
export const SEG_HEADER_SIZE = 64;
export const REC_HEADER_SIZE = 32;
export const ALIGN = 4096;

/** Record codec byte: how the payload is encoded. */
export const CODEC_RAW = 0;
export const CODEC_LZ4 = 1;
export const CODEC_ZSTD = 2;

export function align8(n: number): number {
  return (n + 7) & ~7;
}
export function alignUp(n: number, a = ALIGN): number {
  return Math.ceil(n / a) * a;
}
/** Bytes a record of `len` payload bytes takes in a segment. */
export function recordSpan(len: number): number {
  return align8(REC_HEADER_SIZE + len);
}

/*
 * File header (offset 0, 4096 bytes; only the first 48 are used, the rest zero):
 *   0  u32 magic FILE_MAGIC      4  u16 version     6  u16 flags (0)
 *   8  u32 page size            12  u32 segment size
 *  16  u32 segment count        20  u32 reserved
 *  24  f64 created (ms since the epoch)
 *  32  u64 backing size (bytes, as a double-safe integer in two u32 halves: lo, hi)
 *  40  u32 reserved            44  u32 crc32 of bytes 0..43
 */
export function encodeFileHeader(b: Buffer, pageSize: number, segSize: number, segCount: number, backingSize: number, config?: Buffer): void {
  b.fill(0, 0, FILE_HEADER_SIZE);
  b.writeUInt32LE(FILE_MAGIC, 0);
  b.writeUInt16LE(FORMAT_VERSION, 4);
  if (config !== undefined) {
    // Durable mode: flag bit 0, and the persisted configuration (JSON) at 64 with its own CRC.
    if (config.length > FILE_CONFIG_MAX) throw new RangeError(`persisted configuration is ${config.length} bytes; at most ${FILE_CONFIG_MAX} fit in the file header`);
    b.writeUInt16LE(FILE_FLAG_DURABLE, 6);
    b.writeUInt32LE(config.length, 20);
    b.writeUInt32LE(crc32(config), 40);
    config.copy(b, FILE_CONFIG_OFFSET);
  }
  b.writeUInt32LE(pageSize, 8);
  b.writeUInt32LE(segSize, 12);
  b.writeUInt32LE(segCount, 16);
  b.writeDoubleLE(Date.now(), 24);
  b.writeUInt32LE(backingSize >>> 0, 32);
  b.writeUInt32LE(Math.floor(backingSize / 2 ** 32), 36);
  b.writeUInt32LE(crc32(b.subarray(0, 44)), 44);
}

/** Durable mode's file header: flags bit 0, config length at 20, config CRC at 40, config bytes at 64. */
export const FILE_FLAG_DURABLE = 1;
export const FILE_CONFIG_OFFSET = 64;
export const FILE_CONFIG_MAX = FILE_HEADER_SIZE - FILE_CONFIG_OFFSET;

export interface FileHeader {
  pageSize: number;
  segmentSize: number;
  segmentCount: number;
  backingSize: number;
  durable: boolean;
  /** The persisted configuration (durable mode), or null. */
  config: Buffer | null;
}

/** Decodes a file header; null when the magic, version or a CRC does not hold. */
export function decodeFileHeader(b: Buffer): FileHeader | null {
  if (b.length < FILE_HEADER_SIZE || b.readUInt32LE(0) !== FILE_MAGIC || b.readUInt16LE(4) !== FORMAT_VERSION) return null;
  if (b.readUInt32LE(44) !== crc32(b.subarray(0, 44))) return null;
  const durable = (b.readUInt16LE(6) & FILE_FLAG_DURABLE) !== 0;
  let config: Buffer | null = null;
  if (durable) {
    const n = b.readUInt32LE(20);
    if (n > FILE_CONFIG_MAX) return null;
    config = Buffer.from(b.subarray(FILE_CONFIG_OFFSET, FILE_CONFIG_OFFSET + n));
    if (crc32(config) !== b.readUInt32LE(40)) return null;
  }
  return {
    pageSize: b.readUInt32LE(8), segmentSize: b.readUInt32LE(12), segmentCount: b.readUInt32LE(16),
    backingSize: b.readUInt32LE(32) + b.readUInt32LE(36) * 2 ** 32, durable, config,
  };
}

/*
 * Segment header (first 64 bytes of a segment):
 *   0  u32 magic SEG_MAGIC       4  u16 version      6  u16 flags (0)
 *   8  u32 segment id           12  u32 used bytes (header + records; records end here)
 *  16  u32 record count         20  u32 reserved
 *  24  u64 sequence (lo, hi u32): increases with every segment sealed, across the whole file
 *  32  f64 sealed at (ms since the epoch)
 *  40  u32 x5 reserved          60  u32 crc32 of bytes 0..59
 */
export function encodeSegHeader(b: Uint8Array, segId: number, used: number, records: number, seq: number): void {
  const v = new DataView(b.buffer, b.byteOffset, SEG_HEADER_SIZE);
  new Uint8Array(b.buffer, b.byteOffset, SEG_HEADER_SIZE).fill(0);
  v.setUint32(0, SEG_MAGIC, true);
  v.setUint16(4, FORMAT_VERSION, true);
  v.setUint32(8, segId, true);
  v.setUint32(12, used, true);
  v.setUint32(16, records, true);
  v.setUint32(24, seq >>> 0, true);
  v.setUint32(28, Math.floor(seq / 2 ** 32), true);
  v.setFloat64(32, Date.now(), true);
  v.setUint32(60, crc32(b.subarray(0, 60)), true);
}

/** Returns the used bytes of a valid segment header for `segId`, or -1. */
export function checkSegHeader(b: Uint8Array, segId: number, segSize: number): number {
  const v = new DataView(b.buffer, b.byteOffset, SEG_HEADER_SIZE);
  if (v.getUint32(0, true) !== SEG_MAGIC || v.getUint16(4, true) !== FORMAT_VERSION) return -1;
  if (v.getUint32(60, true) !== crc32(b.subarray(0, 60))) return -1;
  if (v.getUint32(8, true) !== segId) return -1;
  const used = v.getUint32(12, true);
  return used >= SEG_HEADER_SIZE && used <= segSize ? used : -1;
}

/*
 * Record header (32 bytes, at an 8-byte aligned offset inside the segment):
 *   0  u16 magic REC_MAGIC   2  u8 codec (0 raw, 1 lz4, 2 zstd)   3  u8 flags (0)
 *   4  u32 payload length
 *   8  u32 object id (a hint for the cleaner; the core's table decides what is live)
 *  12  u32 fingerprint lo   16  u32 fingerprint hi   (XXH3-64 of the uncompressed page)
 *  20  u32 object serial, low 32 bits (durable mode; bits 32..39 are the flags byte at 3; 0 = none)
 *  24  u32 crc32 of the payload
 *  28  u32 crc32 of header bytes 0..27
 * The payload follows: the object's bytes exactly as the RAM pool held them.
 */
export function encodeRecord(dst: Uint8Array, at: number, id: number, fpLo: number, fpHi: number, codec: number,
  src: Uint8Array, off: number, len: number, serial = 0): void {
  const v = new DataView(dst.buffer, dst.byteOffset + at, REC_HEADER_SIZE);
  v.setUint16(0, REC_MAGIC, true);
  v.setUint8(2, codec);
  v.setUint8(3, Math.floor(serial / 2 ** 32));
  v.setUint32(4, len, true);
  v.setUint32(8, id, true);
  v.setUint32(12, fpLo, true);
  v.setUint32(16, fpHi, true);
  v.setUint32(20, serial >>> 0, true);
  const payload = src.subarray(off, off + len);
  dst.set(payload, at + REC_HEADER_SIZE);
  v.setUint32(24, crc32(payload), true);
  v.setUint32(28, crc32(dst.subarray(at, at + 28)), true);
}

/** Header of a record checked in place: fields are valid only when `ok` was returned. */
export interface RecordView {
  /** Object records: the codec (0..2); journal records: their kind (KIND_JOURNAL, ...). */
  codec: number;
  len: number;
  id: number;
  fpLo: number;
  fpHi: number;
  /** Object serial (durable mode), 0 without; journal records: the checkpoint generation. Set by readRecordHeader. */
  serial?: number;
}

/**
 * Checks the record header at b[at..]: magic, header checksum, and that the payload fits in
 * `limit`. Fills `out` and returns true when valid. The payload checksum is checked separately
 * (checkPayload) so a cleaner can walk a segment without hashing payloads it will drop.
 */
export function readRecordHeader(b: Uint8Array, at: number, limit: number, out: RecordView): boolean {
  if (at + REC_HEADER_SIZE > limit) return false;
  const v = new DataView(b.buffer, b.byteOffset + at, REC_HEADER_SIZE);
  if (v.getUint16(0, true) !== REC_MAGIC) return false;
  if (v.getUint32(28, true) !== crc32(b.subarray(at, at + 28))) return false;
  const len = v.getUint32(4, true);
  if (at + REC_HEADER_SIZE + len > limit) return false;
  out.codec = v.getUint8(2);
  out.len = len;
  out.id = v.getUint32(8, true);
  out.fpLo = v.getUint32(12, true);
  out.fpHi = v.getUint32(16, true);
  out.serial = v.getUint32(20, true) + v.getUint8(3) * 2 ** 32;
  return true;
}

/*
 * Journal records (durable mode) share the record header's layout and magic, so the cleaner walks
 * and copies them like objects; the codec byte says what they are (KIND_*):
 *   0  u16 magic REC_MAGIC   2  u8 kind   3  u8 0
 *   4  u32 payload length
 *   8  u32 sequence lo      12  u32 sequence hi  (journal: the update's sequence number;
 *                                                  checkpoint: the journal sequence it covers)
 *  16  u32 aux (checkpoint chunk: its index; checkpoint end: the chunk count; journal: 0)
 *  20  u32 checkpoint generation (checkpoint records), else 0
 *  24  u32 crc32 of the payload    28  u32 crc32 of header bytes 0..27
 * Payload of KIND_JOURNAL and KIND_CKPT_CHUNK: runs of slots, each
 *   u32 area, u32 first slot, u32 count, then count x 12 B values: u32 tag (0 hole, 1 same-filled
 *   word, 2 object), u32 lo, u32 hi (the word, or the object serial).
 * KIND_CKPT_OBJECTS: the live objects at C, 28 B each: u32 serial lo, u32 serial hi, u32 segment,
 * u32 offset, u32 length, u32 fingerprint lo, u32 fingerprint hi.
 * KIND_CKPT_END: u32 lo, u32 hi: the sequence of the segment that was open when the checkpoint
 * was taken (every record appended after it lives in a segment with that sequence or a higher one).
 */
export const KIND_JOURNAL = 16;
export const KIND_CKPT_CHUNK = 17;
export const KIND_CKPT_END = 18;
/** Checkpoint chunk of object locations: 28 B entries (serial lo, hi, segment, offset, length, fp lo, fp hi). */
export const KIND_CKPT_OBJECTS = 19;
export const OBJECT_ENTRY = 28;
export const RUN_HEADER = 12;
export const SLOT_VALUE = 12;
export const TAG_HOLE = 0, TAG_SAME = 1, TAG_OBJECT = 2;

/** True when a record's codec byte marks it as a journal or checkpoint record. */
export function isMetaKind(codec: number): boolean {
  return codec >= KIND_JOURNAL && codec <= KIND_CKPT_OBJECTS;
}

/** Encodes a journal or checkpoint record header + payload src[0, len) at dst[at..]. */
export function encodeMetaRecord(dst: Uint8Array, at: number, kind: number, seq: number, aux: number, gen: number,
  src: Uint8Array, len: number): void {
  const v = new DataView(dst.buffer, dst.byteOffset + at, REC_HEADER_SIZE);
  v.setUint16(0, REC_MAGIC, true);
  v.setUint8(2, kind);
  v.setUint8(3, 0);
  v.setUint32(4, len, true);
  v.setUint32(8, seq >>> 0, true);
  v.setUint32(12, Math.floor(seq / 2 ** 32), true);
  v.setUint32(16, aux, true);
  v.setUint32(20, gen, true);
  const payload = src.subarray(0, len);
  dst.set(payload, at + REC_HEADER_SIZE);
  v.setUint32(24, crc32(payload), true);
  v.setUint32(28, crc32(dst.subarray(at, at + 28)), true);
}

/** True when the payload of the (header-checked) record at b[at..] matches its checksum. */
export function checkPayload(b: Uint8Array, at: number, len: number): boolean {
  const v = new DataView(b.buffer, b.byteOffset + at, REC_HEADER_SIZE);
  return crc32(b.subarray(at + REC_HEADER_SIZE, at + REC_HEADER_SIZE + len)) === v.getUint32(24, true);
}
