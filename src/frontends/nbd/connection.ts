/**
 * One NBD connection: an incremental parser over the input stream, written as an explicit state
 * machine, that answers the option phase through handshake.ts and then serves transmission
 * requests against an NbdExport.
 *
 *   GREETING ─▶ CLIENT_FLAGS ─▶ OPT_HEADER ⇄ OPT_DATA / OPT_SKIP
 *                                   │ GO / EXPORT_NAME
 *                                   ▼
 *                              REQ_HEADER ⇄ REQ_PAYLOAD (valid WRITE) / REQ_DRAIN (invalid WRITE)
 *                                   │ DISC, protocol error, client gone, server shutdown
 *                                   ▼
 *                                 CLOSED
 *
 * Invariants:
 * - Bytes are consumed only in whole protocol units; a unit that has not fully arrived stays in the
 *   ByteQueue untouched, so a request split across any number of socket reads parses the same.
 * - No buffer is sized from a client's number before it is checked: option data is buffered only
 *   up to MAX_OPTION_DATA (longer is skipped and refused), a WRITE payload only up to MAX_PAYLOAD
 *   after validation (an invalid WRITE's payload is drained without buffering, any length), and a
 *   READ reply is allocated only after validation.
 * - Requests are executed in arrival order, each to completion (the store is synchronous), and
 *   each reply is queued before the next request is parsed. Replies to pipelined requests are
 *   batched with cork/uncork into few writes.
 * - Backpressure: once more than OUTPUT_HIGH_WATER bytes of replies are waiting in the socket, the
 *   parser stops and the input is paused until 'drain'. Memory per connection is therefore bounded
 *   by one socket read + one request (≤ 32 MiB payload) + OUTPUT_HIGH_WATER + one reply.
 * - Stores are applied before their reply is sent, so FLUSH and FUA need no work and their effects
 *   are visible to every connection of the export at reply time (what CAN_MULTI_CONN promises).
 */
import type { Socket } from 'node:net';
import type { Logger } from '../log.js';
import { ByteQueue } from './byte-queue.js';
import type { NbdCounters } from './counters.js';
import type { NbdExport } from './export.js';
import { Negotiator, type ExportDirectory } from './handshake.js';
import {
  BLOCK_STATUS_MAX_EXTENTS, CHUNK, CHUNK_FLAG_DONE, CHUNK_HEADER_SIZE, CLIENT_FLAGS_KNOWN, CMD, CMDF, CMD_NAMES, ERRNO,
  ERRNO_NAMES, FLAG_NO_ZEROES, IHAVEOPT, MAX_OPTION_DATA, META_ID_BASE_ALLOCATION, OPT, REQUEST_HEADER_SIZE,
  REQUEST_MAGIC, SIMPLE_REPLY_SIZE, encodeChunk, encodeErrorChunk, encodeGreeting, encodeSimpleReply, errnoForError,
  readOffset, validateRequest, type RequestContext, type RequestHeader, type WireErrno,
} from './protocol.js';

/** Parser states (named, so logs and tests can say where a connection was). */
export const State = {
  CLIENT_FLAGS: 'client_flags',
  OPT_HEADER: 'opt_header',
  OPT_DATA: 'opt_data',
  OPT_SKIP: 'opt_skip',
  REQ_HEADER: 'req_header',
  REQ_PAYLOAD: 'req_payload',
  REQ_DRAIN: 'req_drain',
  CLOSED: 'closed',
} as const;
export type State = typeof State[keyof typeof State];

/** Replies waiting in the socket beyond this stop the parser until 'drain'. */
const OUTPUT_HIGH_WATER = 4 * 1024 * 1024;
/** Request problems logged per connection before the rest are only counted. */
const LOG_BUDGET = 10;
/** WRITE payloads up to this size that span socket reads are assembled in a reused buffer. */
const PAYLOAD_SCRATCH = 256 * 1024;

/** What a connection needs from its server. */
export interface ConnectionHost extends ExportDirectory {
  readonly counters: NbdCounters;
  connectionClosed(c: NbdConnection): void;
}

/**
 * Extents scratch shared by every connection: the server runs on one thread and a BLOCK_STATUS is
 * encoded before the next request runs, so one array serves all. (length, flags) pairs.
 */
let extentScratch: Uint32Array | undefined;

const ZERO_PADDING = Buffer.alloc(124);
const EMPTY = Buffer.alloc(0);

export class NbdConnection {
  state: State = State.CLIENT_FLAGS;
  private readonly queue = new ByteQueue();
  private readonly neg: Negotiator;
  private noZeroes = false;
  private exp: NbdExport | undefined;
  private readonly ctx: RequestContext = { size: 0, readOnly: true, structured: false, metaAllocation: false };

  // Current option or request (one of each per connection, overwritten in place).
  private opt = 0;
  private optLen = 0;
  private skipLeft = 0;
  private readonly hdr = Buffer.alloc(REQUEST_HEADER_SIZE);
  private readonly req: RequestHeader = { flags: 0, type: 0, cookie: Buffer.alloc(8), offset: 0, length: 0 };
  private pendingErrno: WireErrno = ERRNO.OK;
  private payloadScratch: Buffer | undefined;

  private blocked = false;
  private inputEnded = false;
  private pumping = false;
  private shuttingDown = false;
  private logBudget = LOG_BUDGET;
  private suppressed = 0;
  private resolveClosed!: () => void;
  /** Resolves once both streams are closed. */
  readonly closed: Promise<void> = new Promise((r) => { this.resolveClosed = r; });

  constructor(
    private readonly host: ConnectionHost,
    private readonly input: Socket,
    private readonly output: Socket,
    readonly id: number,
    private readonly log: Logger,
  ) {
    this.neg = new Negotiator(host, (b) => this.send(b));
  }

  /** Sends the greeting and starts reading. */
  start(): void {
    const c = this.host.counters;
    c.connections_accepted++;
    c.connections_active++;
    this.input.on('data', (chunk: Buffer) => {
      this.queue.push(chunk);
      this.pump();
    });
    this.input.on('end', () => this.onInputEnd());
    this.input.on('error', (e) => this.onStreamError(e));
    this.input.on('close', () => this.onClose());
    if (this.output !== this.input) {
      this.output.on('error', (e) => this.onStreamError(e));
      this.output.on('close', () => this.onClose());
    }
    this.output.on('drain', () => {
      if (!this.blocked || this.output.writableLength > OUTPUT_HIGH_WATER) return;
      this.blocked = false;
      this.pump();
    });
    this.send(encodeGreeting());
  }

  /**
   * Graceful stop: answer every request already received in full, then close. A request that is
   * half received is abandoned when the client sends nothing more (the server's shutdown timer
   * destroys the connection).
   */
  shutdown(): void {
    if (this.state === State.CLOSED) return;
    this.shuttingDown = true;
    if (this.state !== State.REQ_PAYLOAD && this.state !== State.REQ_DRAIN) {
      this.pump();
      if (!this.isClosed() && !this.blocked) this.finish('server shutdown');
    }
  }

  /** Hard stop (shutdown timer, tests). */
  destroy(): void {
    this.input.destroy();
    if (this.output !== this.input) this.output.destroy();
  }

  // ---- the parser ---------------------------------------------------------------------------

  /** Runs the state machine over queued input until it needs more bytes, blocks, or closes. */
  private pump(): void {
    if (this.pumping || this.state === State.CLOSED) return;
    this.pumping = true;
    this.output.cork();
    try {
      while (!this.blocked && !this.isClosed() && this.step()) { /* next unit */ }
    } finally {
      this.pumping = false;
      this.output.uncork();
    }
    if (this.isClosed()) return;
    if (this.blocked) this.input.pause();
    else if (this.inputEnded) this.endAfterInput();
    else if (this.shuttingDown && this.state !== State.REQ_PAYLOAD && this.state !== State.REQ_DRAIN) this.finish('server shutdown');
    else this.input.resume();
  }

  /** Consumes one protocol unit if it has fully arrived; returns false when more input is needed. */
  private step(): boolean {
    const q = this.queue;
    switch (this.state) {
      case State.CLIENT_FLAGS: {
        if (q.length < 4) return false;
        const flags = q.take(4).readUInt32BE(0);
        if ((flags & ~CLIENT_FLAGS_KNOWN) !== 0) return this.protocolError(`unknown client flags 0x${flags.toString(16)}`);
        this.noZeroes = (flags & FLAG_NO_ZEROES) !== 0;
        this.state = State.OPT_HEADER;
        return true;
      }
      case State.OPT_HEADER: {
        if (q.length < 16) return false;
        const h = q.take(16);
        if (h.readBigUInt64BE(0) !== IHAVEOPT) return this.protocolError('bad option magic');
        this.opt = h.readUInt32BE(8);
        this.optLen = h.readUInt32BE(12);
        if (this.optLen > MAX_OPTION_DATA) {
          this.skipLeft = this.optLen;
          this.state = State.OPT_SKIP;
        } else {
          this.state = State.OPT_DATA;
        }
        return true;
      }
      case State.OPT_DATA: {
        if (q.length < this.optLen) return false;
        const data = this.optLen === 0 ? EMPTY : q.take(this.optLen);
        return this.afterOption(this.neg.handle(this.opt, data));
      }
      case State.OPT_SKIP: {
        this.skipLeft -= q.skip(this.skipLeft);
        if (this.skipLeft > 0) return false;
        return this.afterOption(this.neg.tooBig(this.opt));
      }
      case State.REQ_HEADER: {
        if (q.length < REQUEST_HEADER_SIZE) return false;
        q.copyOut(this.hdr, REQUEST_HEADER_SIZE);
        return this.onRequestHeader();
      }
      case State.REQ_PAYLOAD: {
        const r = this.req;
        if (q.length < r.length) return false;
        if (r.length > PAYLOAD_SCRATCH) {
          this.execute(q.take(r.length));
        } else {
          this.payloadScratch ??= Buffer.allocUnsafe(PAYLOAD_SCRATCH);
          this.execute(q.take(r.length, this.payloadScratch));
        }
        this.state = State.REQ_HEADER;
        return true;
      }
      case State.REQ_DRAIN: {
        this.skipLeft -= q.skip(this.skipLeft);
        if (this.skipLeft > 0) return false;
        this.replyError(this.pendingErrno);
        this.state = State.REQ_HEADER;
        return true;
      }
      case State.CLOSED:
        return false;
    }
  }

  private afterOption(outcome: 'continue' | 'transmit' | 'close'): boolean {
    const refusal = this.neg.lastRefusal;
    if (outcome === 'continue') {
      if (refusal !== null) {
        this.host.counters.options_refused++;
        this.note('option refused', { opt: refusal.opt, reply: `0x${refusal.reply.toString(16)}`, why: refusal.why });
      }
      this.state = State.OPT_HEADER;
      return true;
    }
    if (outcome === 'close') {
      if (refusal !== null) return this.protocolError(refusal.why);
      this.host.counters.handshake_aborted++;
      this.finish('client aborted the handshake');
      return false;
    }
    // transmit
    const e = this.neg.export!;
    this.exp = e;
    this.ctx.size = e.size;
    this.ctx.readOnly = e.readOnly;
    this.ctx.structured = this.neg.structured;
    this.ctx.metaAllocation = this.neg.metaAllocation;
    if (this.opt === OPT.EXPORT_NAME) {
      const b = Buffer.allocUnsafe(10);
      b.writeBigUInt64BE(BigInt(e.size), 0);
      b.writeUInt16BE(this.neg.transmissionFlags, 8);
      this.send(b);
      if (!this.noZeroes) this.send(ZERO_PADDING);
    }
    this.host.counters.handshakes_completed++;
    this.log.info('transmission', {
      export: e.name, structured: this.ctx.structured, base_allocation: this.ctx.metaAllocation,
      flags: `0x${this.neg.transmissionFlags.toString(16)}`,
    });
    this.state = State.REQ_HEADER;
    return true;
  }

  private onRequestHeader(): boolean {
    const h = this.hdr;
    if (h.readUInt32BE(0) !== REQUEST_MAGIC) return this.protocolError(`bad request magic 0x${h.readUInt32BE(0).toString(16)}`);
    const r = this.req;
    r.flags = h.readUInt16BE(4);
    r.type = h.readUInt16BE(6);
    h.copy(r.cookie as Buffer, 0, 8, 16);
    r.offset = readOffset(h, 16);
    r.length = h.readUInt32BE(24);
    this.host.counters.countRequest(r.type);
    if (this.log.debugEnabled) {
      this.log.debug('request', { cmd: CMD_NAMES[r.type] ?? r.type, flags: r.flags, offset: r.offset, length: r.length });
    }
    if (r.type === CMD.DISC) {
      this.finish('client sent DISC');
      return false;
    }
    const errno = validateRequest(r, this.ctx);
    if (r.type === CMD.WRITE) {
      if (errno === ERRNO.OK) {
        this.state = r.length === 0 ? State.REQ_HEADER : State.REQ_PAYLOAD;
        if (r.length === 0) this.replyOk();
      } else {
        this.pendingErrno = errno;
        this.skipLeft = r.length;
        this.state = State.REQ_DRAIN;
      }
      return true;
    }
    if (errno !== ERRNO.OK) this.replyError(errno);
    else this.execute(EMPTY);
    return true;
  }

  // ---- commands -----------------------------------------------------------------------------

  /** Runs a validated request (payload: the WRITE data, else empty) and queues its reply. */
  private execute(payload: Buffer): void {
    const r = this.req;
    const e = this.exp!;
    try {
      switch (r.type) {
        case CMD.READ: return this.read(e);
        case CMD.WRITE: {
          const errno = e.write(r.offset, payload);
          if (errno === ERRNO.OK) this.host.counters.bytes_written += payload.length;
          return this.replyStatus(errno);
        }
        case CMD.FLUSH:  // every store is applied before its reply: nothing is pending
        case CMD.CACHE:  // the whole export is in memory already
          return this.replyOk();
        case CMD.TRIM:
          e.trim(r.offset, r.length);
          return this.replyOk();
        case CMD.WRITE_ZEROES:
          return this.replyStatus(e.zero(r.offset, r.length, (r.flags & CMDF.NO_HOLE) !== 0));
        case CMD.BLOCK_STATUS: return this.blockStatus(e);
        default:
          return this.replyError(ERRNO.EINVAL); // unreachable: validateRequest refuses unknown types
      }
    } catch (err) {
      this.replyError(errnoForError(err, this.log, { cmd: CMD_NAMES[r.type] ?? String(r.type), offset: r.offset, length: r.length }), true);
    }
  }

  private read(e: NbdExport): void {
    const r = this.req;
    if (this.ctx.structured) {
      if (r.length === 0) {
        this.send(encodeChunk(CHUNK_FLAG_DONE, CHUNK.NONE, r.cookie, 0));
        return;
      }
      // One OFFSET_DATA chunk covering the whole request (so DF is always honoured).
      const b = encodeChunk(CHUNK_FLAG_DONE, CHUNK.OFFSET_DATA, r.cookie, 8 + r.length);
      b.writeUInt32BE(Math.floor(r.offset / 0x100000000), CHUNK_HEADER_SIZE);
      b.writeUInt32BE(r.offset >>> 0, CHUNK_HEADER_SIZE + 4);
      e.read(r.offset, b.subarray(CHUNK_HEADER_SIZE + 8));
      this.host.counters.bytes_read += r.length;
      this.send(b);
      return;
    }
    const b = encodeSimpleReply(0, r.cookie, r.length);
    e.read(r.offset, b.subarray(SIMPLE_REPLY_SIZE));
    this.host.counters.bytes_read += r.length;
    this.send(b);
  }

  private blockStatus(e: NbdExport): void {
    const r = this.req;
    extentScratch ??= new Uint32Array(2 * BLOCK_STATUS_MAX_EXTENTS);
    const n = e.blockStatus(r.offset, r.length, (r.flags & CMDF.REQ_ONE) !== 0, extentScratch, BLOCK_STATUS_MAX_EXTENTS);
    const b = encodeChunk(CHUNK_FLAG_DONE, CHUNK.BLOCK_STATUS, r.cookie, 4 + 8 * n);
    b.writeUInt32BE(META_ID_BASE_ALLOCATION, CHUNK_HEADER_SIZE);
    for (let i = 0, pos = CHUNK_HEADER_SIZE + 4; i < 2 * n; i++, pos += 4) b.writeUInt32BE(extentScratch[i]!, pos);
    this.send(b);
  }

  // ---- replies ------------------------------------------------------------------------------

  private replyOk(): void {
    this.send(encodeSimpleReply(ERRNO.OK, this.req.cookie));
  }

  private replyStatus(errno: WireErrno): void {
    if (errno === ERRNO.OK) this.replyOk();
    else this.replyError(errno, true);
  }

  /**
   * Error reply: a structured ERROR chunk where the command's replies must be structured (READ and
   * BLOCK_STATUS once structured replies are on), else a simple reply. `logged`: the cause was
   * already logged (store failures), so only count it.
   */
  private replyError(errno: WireErrno, logged = false): void {
    const r = this.req;
    this.host.counters.countError(errno);
    if (!logged) {
      this.note('request refused', {
        cmd: CMD_NAMES[r.type] ?? r.type, flags: r.flags, offset: Number.isFinite(r.offset) ? r.offset : '>= 2^53', length: r.length,
        errno: ERRNO_NAMES[errno],
      });
    }
    if (this.ctx.structured && (r.type === CMD.READ || r.type === CMD.BLOCK_STATUS)) {
      this.send(encodeErrorChunk(errno, r.cookie, ERRNO_NAMES[errno] ?? 'error'));
    } else {
      this.send(encodeSimpleReply(errno, r.cookie));
    }
  }

  /** The state, read through a call so TypeScript does not narrow it across calls that change it. */
  private isClosed(): boolean { return this.state === State.CLOSED; }

  private send(b: Buffer): void {
    if (this.state === State.CLOSED || !this.output.writable) return;
    this.output.write(b);
    if (this.output.writableLength > OUTPUT_HIGH_WATER) this.blocked = true;
  }

  // ---- ending -------------------------------------------------------------------------------

  /** A violation after which the stream cannot be trusted: log, count, disconnect. */
  private protocolError(why: string): false {
    this.host.counters.protocol_errors++;
    this.log.warn('protocol error, disconnecting', { why, state: this.state });
    this.finish(why);
    return false;
  }

  /** Flushes queued replies, then closes both streams. */
  private finish(why: string): void {
    if (this.state === State.CLOSED) return;
    this.state = State.CLOSED;
    this.queue.clear();
    this.input.pause();
    this.log.debug('closing', { why });
    const out = this.output;
    if (out.writable) {
      out.end(() => this.destroy());
    } else {
      this.destroy();
    }
  }

  /**
   * The client closed its sending side. Requests it sent in full are still answered: if replies
   * are backed up, the parser finishes after 'drain' (pump() calls endAfterInput()).
   */
  private onInputEnd(): void {
    this.inputEnded = true;
    if (this.state === State.CLOSED || this.blocked) return;
    this.pump();
  }

  private endAfterInput(): void {
    const midUnit = this.queue.length > 0 || this.state === State.REQ_PAYLOAD || this.state === State.REQ_DRAIN ||
      this.state === State.OPT_DATA || this.state === State.OPT_SKIP;
    if (midUnit) {
      this.host.counters.disconnect_mid_request++;
      this.note('client closed mid-request', { state: this.state, unparsed: this.queue.length });
    } else if (this.exp === undefined) {
      this.host.counters.handshake_aborted++;
    }
    this.finish('client closed');
  }

  private onStreamError(e: Error): void {
    this.log.debug('stream error', { cause: e });
    this.state = State.CLOSED;
    this.destroy();
  }

  private closedOnce = false;
  private onClose(): void {
    if (this.output !== this.input && !(this.input.destroyed && this.output.destroyed)) {
      this.destroy();
      return;
    }
    if (this.closedOnce) return;
    this.closedOnce = true;
    this.state = State.CLOSED;
    this.queue.clear();
    if (this.suppressed > 0) this.log.warn('request problems not logged', { suppressed: this.suppressed });
    this.host.counters.connections_active--;
    this.host.connectionClosed(this);
    this.resolveClosed();
  }

  /** Logs a client's mistake, at most LOG_BUDGET per connection (the rest are counted). */
  private note(msg: string, fields: Record<string, unknown>): void {
    if (this.logBudget > 0) {
      this.logBudget--;
      this.log.warn(msg, fields);
    } else {
      this.suppressed++;
    }
  }
}
