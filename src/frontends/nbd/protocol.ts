/**
 * NBD wire protocol: constants, the one request validation function, the one mapping from internal
 * errors to wire errors, and reply encoders. Everything here is pure (no sockets, no store).
 *
 * Source: NetworkBlockDevice/nbd doc/proto.md; summary in /work/shared/reference/nbd.md and
 * docs/NBD.md. All integers are big-endian and read unsigned. Offsets are u64 on the wire; they are
 * decoded exactly when below 2^53 and as Infinity above (always past the end of an export, whose
 * size is a safe integer), so no offset is ever silently rounded.
 */
import { ZdedupError } from '../../core/errors.js';
import type { Logger } from '../log.js';

// ---------------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------------

export const NBDMAGIC = 0x4e42444d41474943n;      // "NBDMAGIC"
export const IHAVEOPT = 0x49484156454f5054n;      // "IHAVEOPT"
export const OPT_REPLY_MAGIC = 0x0003e889045565a9n;

/** Server handshake flags. */
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
/** Client flags: the same two bits; anything else makes us drop the connection. */
export const CLIENT_FLAGS_KNOWN = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES;

export const OPT = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

export const REP = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_PLATFORM: 0x80000004,
  ERR_TLS_REQD: 0x80000005,
  ERR_UNKNOWN: 0x80000006,
  ERR_SHUTDOWN: 0x80000007,
  ERR_BLOCK_SIZE_REQD: 0x80000008,
  ERR_TOO_BIG: 0x80000009,
} as const;

export const INFO = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

/** Longest string the protocol allows (export names, descriptions, context names). */
export const MAX_STRING = 4096;
/**
 * Longest option payload we buffer. The largest legal option we understand is SET_META_CONTEXT
 * with a few queries of at most MAX_STRING bytes each; 64 KiB leaves room for 15 of them. A longer
 * option is skipped without buffering and answered ERR_TOO_BIG.
 */
export const MAX_OPTION_DATA = 64 * 1024;

export const META_BASE_ALLOCATION = 'base:allocation';
/** Context id we hand out for base:allocation after SET_META_CONTEXT (LIST replies use 0). */
export const META_ID_BASE_ALLOCATION = 1;

// ---------------------------------------------------------------------------------------------
// Transmission
// ---------------------------------------------------------------------------------------------

export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;
export const REQUEST_HEADER_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;
export const CHUNK_HEADER_SIZE = 20;

/** Transmission flags (u16 sent with the export size). */
export const TF = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const;

export const CMD = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;

/** Command names by type, for logs and per-command counters (index = command type). */
export const CMD_NAMES = ['read', 'write', 'disc', 'flush', 'trim', 'cache', 'write_zeroes', 'block_status'] as const;
export type CmdName = typeof CMD_NAMES[number] | 'unknown';

export const CMDF = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
} as const;

/** Command flags each command accepts (FUA is accepted on everything, as the spec asks). */
const ALLOWED_FLAGS: readonly number[] = [
  /* READ */ CMDF.FUA | CMDF.DF,
  /* WRITE */ CMDF.FUA,
  /* DISC */ CMDF.FUA,
  /* FLUSH */ CMDF.FUA,
  /* TRIM */ CMDF.FUA,
  /* CACHE */ CMDF.FUA,
  /* WRITE_ZEROES */ CMDF.FUA | CMDF.NO_HOLE | CMDF.FAST_ZERO,
  /* BLOCK_STATUS */ CMDF.FUA | CMDF.REQ_ONE,
];

export const CHUNK = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002,
} as const;
export const CHUNK_FLAG_DONE = 1;

/** base:allocation extent flags. */
export const STATE_HOLE = 1;
export const STATE_ZERO = 2;

/** Wire error numbers (fixed by the protocol, not the host's errno values). */
export const ERRNO = {
  OK: 0,
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;
export type WireErrno = typeof ERRNO[keyof typeof ERRNO];
export const ERRNO_NAMES: Record<number, string> = {
  0: 'ok', 1: 'EPERM', 5: 'EIO', 12: 'ENOMEM', 22: 'EINVAL', 28: 'ENOSPC', 75: 'EOVERFLOW', 95: 'ENOTSUP', 108: 'ESHUTDOWN',
};

/**
 * Block size constraints we advertise in INFO_BLOCK_SIZE. min 1: any byte offset and length work
 * (partial pages are read-modify-write). preferred: the page size. max: the largest READ/WRITE
 * payload, 32 MiB (the figure the spec guarantees clients never get refused below, and the
 * kernel's max_hw_sectors). It bounds per-connection buffering: one request is assembled at most.
 */
export const BLOCK_MIN = 1;
export const MAX_PAYLOAD = 32 * 1024 * 1024;
/** Cap on bytes one BLOCK_STATUS reply describes (a reply may cover less than asked; clients ask again). */
export const BLOCK_STATUS_MAX_BYTES = 1 << 30;
/** Cap on extents in one BLOCK_STATUS reply (the spec's limit is 2^20; one page per extent at most). */
export const BLOCK_STATUS_MAX_EXTENTS = 1 << 18;

// ---------------------------------------------------------------------------------------------
// Request validation: the one place a client's numbers are checked
// ---------------------------------------------------------------------------------------------

/** A parsed request header. Reused per connection (one object, overwritten per request). */
export interface RequestHeader {
  flags: number;
  type: number;
  /** The 8 cookie bytes, echoed verbatim (the connection's own 8-byte buffer). */
  cookie: Uint8Array;
  /**
   * The u64 offset as an exact Number, or Infinity when it is 2^53 or more (then it is certainly
   * past the end of any export, and validation says so).
   */
  offset: number;
  length: number;
}

/** Decodes the u64 offset at b[pos] into an exact Number, or Infinity if it is not a safe integer. */
export function readOffset(b: Buffer, pos: number): number {
  const hi = b.readUInt32BE(pos);
  if (hi >= 0x200000) return Infinity;
  return hi * 0x100000000 + b.readUInt32BE(pos + 4);
}

/** What validation needs to know about the connection and its export. */
export interface RequestContext {
  size: number;
  readOnly: boolean;
  structured: boolean;
  /** base:allocation selected with SET_META_CONTEXT. */
  metaAllocation: boolean;
}

/** Whether the request carries a payload on the wire (only WRITE does). */
export function hasPayload(h: RequestHeader): boolean {
  return h.type === CMD.WRITE;
}

/**
 * Checks a request against the protocol and the export. Returns ERRNO.OK or
 * the errno to reply with. A WRITE that fails validation still has its payload drained by the
 * caller. DISC is always valid (flags are ignored: there is no reply to carry an error).
 */
export function validateRequest(h: RequestHeader, c: RequestContext): WireErrno {
  const t = h.type;
  if (t === CMD.DISC) return ERRNO.OK;
  if (t < 0 || t >= ALLOWED_FLAGS.length) return ERRNO.EINVAL; // unknown command
  if ((h.flags & ~ALLOWED_FLAGS[t]!) !== 0) return ERRNO.EINVAL;
  if ((h.flags & CMDF.DF) !== 0 && !c.structured) return ERRNO.EINVAL;

  if (t === CMD.FLUSH) {
    return h.offset !== 0 || h.length !== 0 ? ERRNO.EINVAL : ERRNO.OK;
  }
  if (t === CMD.BLOCK_STATUS && (!c.structured || !c.metaAllocation)) return ERRNO.EINVAL;
  if ((t === CMD.READ || t === CMD.WRITE) && h.length > MAX_PAYLOAD) {
    return ERRNO.EINVAL; // larger than the advertised maximum payload (TRIM/ZEROES may exceed it)
  }
  if (t === CMD.BLOCK_STATUS && h.length === 0) return ERRNO.EINVAL;

  const writes = t === CMD.WRITE || t === CMD.TRIM || t === CMD.WRITE_ZEROES;
  // Range: offset + length <= size. Both are exact Numbers below 2^53 + 2^32 (or Infinity): no wrap.
  if (h.offset + h.length > c.size) {
    return t === CMD.WRITE || t === CMD.WRITE_ZEROES ? ERRNO.ENOSPC : ERRNO.EINVAL;
  }
  if (writes && c.readOnly) return ERRNO.EPERM;
  return ERRNO.OK;
}

// ---------------------------------------------------------------------------------------------
// Error mapping: the one place internal errors become wire errors
// ---------------------------------------------------------------------------------------------

/** Store outcomes that are results rather than exceptions. */
export type StoreOutcome = 'stored' | 'reject_pool_limit' | 'reject_alloc_fail' | 'reject_reclaim_fail' | 'reject_quota';

/**
 * Maps an exception thrown while serving a request to a wire errno, logging the real cause first.
 * ERR_DECOMPRESS (corruption: we never return wrong data) → EIO. Range and argument errors that
 * slipped past validation are our bugs → EINVAL, logged at error level. Anything else → EIO.
 */
export function errnoForError(err: unknown, log: Logger, what: { cmd: string; offset: number; length: number }): WireErrno {
  const code = err instanceof ZdedupError ? err.code : undefined;
  let errno: WireErrno;
  switch (code) {
    case 'ERR_DECOMPRESS':
    case 'ERR_CORRUPT':
    case 'ERR_IO':
      errno = ERRNO.EIO;
      break;
    case 'ERR_OFFSET_RANGE':
    case 'ERR_INVALID_ARGUMENT':
    case 'ERR_PAGE_LENGTH':
      errno = ERRNO.EINVAL;
      break;
    default:
      errno = ERRNO.EIO;
  }
  log.error('request failed', { ...what, cause: err, errno: ERRNO_NAMES[errno] });
  return errno;
}

/** Maps a rejected store to a wire errno (pool limit or allocation failure: no space). */
export function errnoForStore(outcome: StoreOutcome): WireErrno {
  return outcome === 'stored' ? ERRNO.OK : ERRNO.ENOSPC;
}

// ---------------------------------------------------------------------------------------------
// Encoders (each returns a fresh Buffer handed to the socket; never reused after write)
// ---------------------------------------------------------------------------------------------

/** The 18-byte server greeting. */
export function encodeGreeting(): Buffer {
  const b = Buffer.allocUnsafe(18);
  b.writeBigUInt64BE(NBDMAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
  return b;
}

/** An option reply header followed by `data`. */
export function encodeOptionReply(opt: number, type: number, data?: Uint8Array): Buffer {
  const len = data ? data.length : 0;
  const b = Buffer.allocUnsafe(20 + len);
  b.writeBigUInt64BE(OPT_REPLY_MAGIC, 0);
  b.writeUInt32BE(opt >>> 0, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(len, 16);
  if (data) b.set(data, 20);
  return b;
}

/** Simple reply header: magic, error, cookie; `extra` bytes of room after it (READ data). */
export function encodeSimpleReply(errno: number, cookie: Uint8Array, extra = 0): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE + extra);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(errno, 4);
  b.set(cookie, 8);
  return b;
}

/** Structured chunk header with `payload` bytes of room after it (caller fills them). */
export function encodeChunk(flags: number, type: number, cookie: Uint8Array, payload: number): Buffer {
  const b = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + payload);
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.set(cookie, 8);
  b.writeUInt32BE(payload, 16);
  return b;
}

/** A final structured ERROR chunk (with a short human message). */
export function encodeErrorChunk(errno: number, cookie: Uint8Array, message: string): Buffer {
  const msg = Buffer.from(message.slice(0, 200), 'utf8');
  const b = encodeChunk(CHUNK_FLAG_DONE, CHUNK.ERROR, cookie, 6 + msg.length);
  b.writeUInt32BE(errno, CHUNK_HEADER_SIZE);
  b.writeUInt16BE(msg.length, CHUNK_HEADER_SIZE + 4);
  msg.copy(b, CHUNK_HEADER_SIZE + 6);
  return b;
}
