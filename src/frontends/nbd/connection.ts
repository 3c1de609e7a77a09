/**
 * One NBD connection: an incremental parser over the input stream, written as an explicit state
 * machine, that answers the option phase through handshake.ts and then serves transmission
 * requests against an NbdExport.
 *
 *   GREETING ─▶ CLIENT_FLAGS ─▶ OPT_HEADER ⇄ OPT_DATA / OPT_SKIP
 *                                   │  ⇅ STARTTLS: TLS_HANDSHAKE (the streams become a TLSSocket)
 *                                   │ GO / EXPORT_NAME
 *                                   ▼
 *                              REQ_HEADER ⇄ REQ_PAYLOAD (valid WRITE) / REQ_DRAIN (invalid WRITE)
 *                                   │  ⇅ REQ_WAIT (a READ reply or large WRITE payload waits for
 *                                   │            the server's buffer budget, budget.ts)
 *                                   │ DISC, protocol error, client half-close, server shutdown
 *                                   ▼
 *                               CLOSING  (only while requests are in flight: no more parsing,
 *                                   │     their replies still go out)
 *                                   ▼ last in-flight reply queued (or at once when none)
 *                                 CLOSED ◀── client gone / stream error, from any state
 *
 * A request is executed as soon as it is complete. When the export answers synchronously (every
 * page in RAM: the fast path) the reply is queued at once, exactly as if the store were all there
 * is. When it returns a Promise (a page on a slower tier), the request is "in flight": the fields
 * its reply needs (cookie, type, flags, offset, length) are copied into an InFlight record, since
 * `req` and `hdr` belong to the next request, and the reply is queued when the Promise settles.
 *
 * Invariants:
 * - Bytes are consumed only in whole protocol units; a unit that has not fully arrived stays in the
 *   ByteQueue untouched, so a request split across any number of socket reads parses the same.
 * - No buffer is sized from a client's number before it is checked: option data is buffered only
 *   up to MAX_OPTION_DATA (longer is skipped and refused), a WRITE payload only up to MAX_PAYLOAD
 *   after validation (an invalid WRITE's payload is drained without buffering, any length), and a
 *   READ reply is allocated only after validation.
 * - Requests start in arrival order. A synchronous one is answered before the next is parsed;
 *   replies to pipelined requests are batched with cork/uncork into few writes.
 * - Replies go out in completion order, not arrival order; clients match them by cookie (the
 *   protocol allows it). Every fully received request gets exactly one reply unless the client
 *   is gone.
 * - At most MAX_IN_FLIGHT requests are in flight per connection. At the bound the parser stops
 *   and the input is paused, as for output backpressure; the next completion resumes it.
 * - Ordering rule: only READs overlap. A WRITE or WRITE_ZEROES that goes in flight stops the
 *   parser until it settles, so nothing received after it is reordered around it, and its payload
 *   (possibly a view of payloadScratch or of a socket chunk) is not reused while the export reads
 *   it. READs received before such a write may still be in flight while it runs; the protocol
 *   leaves the result of overlapping, unanswered requests open.
 * - FLUSH is answered only when every write received before it has completed. It follows from
 *   the rule above (a FLUSH is never parsed while a write is in flight) and is checked anyway.
 * - Closing (DISC, client half-close, protocol error, server shutdown) waits in CLOSING until
 *   every in-flight request is answered. Once the client is gone (state CLOSED), completions are
 *   dropped without touching the socket.
 * - Backpressure: once more than OUTPUT_HIGH_WATER bytes of replies are waiting in the socket, the
 *   parser stops and the input is paused until 'drain'. Memory per connection is therefore bounded
 *   by one socket read + one request (≤ 32 MiB payload) + OUTPUT_HIGH_WATER + one reply, plus the
 *   reply buffers of in-flight READs (≤ MAX_IN_FLIGHT of them, each ≤ 32 MiB).
 * - Stores are applied before their reply is sent (a write in flight is not answered until its
 *   Promise settles), so their effects are visible to every connection of the export at reply
 *   time (what CAN_MULTI_CONN promises). Without durable mode FLUSH and FUA need no more work;
 *   in durable mode (store.persistent) a FLUSH, and a WRITE / WRITE_ZEROES / TRIM with FUA, go
 *   in flight until store.sync() has put them on the medium (docs/NBD.md).
 * - Buffer budget: a READ's reply buffer and a WRITE payload longer than PAYLOAD_SCRATCH are
 *   charged to the server's BufferBudget before they are allocated or received, and given back
 *   when the socket has taken the reply (write callback, in write order: `charged`) or the store
 *   has taken the payload. `held` is this connection's total charge; closing gives it all back.
 * - STARTTLS: the ACK is written in plaintext, the parser stops (TLS_HANDSHAKE), and once the
 *   cork is released the raw stream is wrapped in a TLSSocket that replaces input and output. The
 *   client waits for the ACK before sending its ClientHello, so no byte can be queued at the swap
 *   (one would be a protocol error).
 * - Timeouts are not timers here: the server's sweep (server.ts) reads `acceptedAt`, `negotiating`
 *   and idleSince() and calls timeOut(); counting progress costs one increment per socket read.
 */
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { Logger } from '../log.js';
import type { BudgetHolder, BufferBudget } from './budget.js';
import { ByteQueue } from './byte-queue.js';
import type { LatencyHistogram, NbdCounters } from './counters.js';
import type { NbdExport } from './export.js';
import { Negotiator, type ExportDirectory, type OptionOutcome } from './handshake.js';
import {
  BLOCK_STATUS_MAX_EXTENTS, CHUNK, CHUNK_FLAG_DONE, CHUNK_HEADER_SIZE, CLIENT_FLAGS_KNOWN, CMD, CMDF, CMD_NAMES, ERRNO,
  ERRNO_NAMES, FLAG_NO_ZEROES, IHAVEOPT, MAX_OPTION_DATA, META_ID_BASE_ALLOCATION, OPT, REP, REQUEST_HEADER_SIZE,
  REQUEST_MAGIC, SIMPLE_REPLY_SIZE, encodeChunk, encodeErrorChunk, encodeGreeting, encodeSimpleReply, errnoForError,
  readOffset, validateRequest, type RequestContext, type RequestHeader, type WireErrno,
} from './protocol.js';
import { startTls, type TlsCredentials, type TlsMode } from './tls.js';
import { youngGc } from '../../core/reclaim.js';

/** Parser states (named, so logs and tests can say where a connection was). */
export const State = {
  CLIENT_FLAGS: 'client_flags',
  OPT_HEADER: 'opt_header',
  OPT_DATA: 'opt_data',
  OPT_SKIP: 'opt_skip',
  TLS_HANDSHAKE: 'tls_handshake',
  REQ_HEADER: 'req_header',
  REQ_WAIT: 'req_wait',
  REQ_PAYLOAD: 'req_payload',
  REQ_DRAIN: 'req_drain',
  CLOSING: 'closing',
  CLOSED: 'closed',
} as const;
export type State = typeof State[keyof typeof State];

/**
 * Socket input (all connections) between two young-generation collections: Node's socket read
 * buffers (64 KiB each, from malloc) are freed only when V8 collects them, which it does by JS
 * allocation, not by their size (reclaim.ts, youngGc). Measured on a 631 MiB write through 4
 * connections, malloc's heap peaked at 59-72 MiB without this, ~32 MiB with a collection every
 * 4 MiB, ~15 MiB every 1 MiB. At 2 MiB, RSS beyond pool + metadata during a zstd write fell from
 * ~13 to ~10 MiB (4 runs each) at the same speed: a scavenge of this small heap costs ~0.1-0.5 ms.
 */
const YOUNG_GC_INPUT_BYTES = 2 * 1024 * 1024;
let inputSinceGc = 0;
/** Replies waiting in the socket beyond this stop the parser until 'drain'. */
const OUTPUT_HIGH_WATER = 4 * 1024 * 1024;
/** Request problems logged per connection before the rest are only counted. */
const LOG_BUDGET = 10;
/** WRITE payloads up to this size that span socket reads are assembled in a reused buffer. */
const PAYLOAD_SCRATCH = 256 * 1024;
/**
 * Requests in flight (export call returned a Promise, reply not queued yet) per connection. At
 * this many the parser stops until one completes. 16 is nbdkit's default thread count per
 * connection; clients pipeline deeper (the kernel 128, nbdcopy 64) and simply wait.
 */
export const MAX_IN_FLIGHT = 16;

/** What a connection needs from its server. */
export interface ConnectionHost extends ExportDirectory {
  readonly counters: NbdCounters;
  readonly budget: BufferBudget;
  connectionClosed(c: NbdConnection): void;
}

/** Per-connection settings from its listener. */
export interface ConnectionOptions {
  /** TLS policy; 'on'/'require' need `tls`. */
  tlsMode: TlsMode;
  tls?: TlsCredentials;
}

const NO_TLS: ConnectionOptions = { tlsMode: 'off' };

/**
 * Extents scratch shared by every connection: the server runs on one thread and a BLOCK_STATUS is
 * encoded before the next request runs, so one array serves all. (length, flags) pairs.
 */
let extentScratch: Uint32Array | undefined;

const ZERO_PADDING = Buffer.alloc(124);
const EMPTY = Buffer.alloc(0);

/**
 * Why the client's certificate is not trusted, or null when it is (--tls-verify-peer). OpenSSL
 * itself refuses a client that sends no certificate; a certificate that does not chain to
 * ca-cert.pem is left to the application, and Node records the verdict only for sockets a
 * tls.Server accepted (`authorized`). This reads the same verdict the way tls.Server does, and
 * refuses when it cannot be read.
 */
function peerVerifyError(t: TLSSocket): string | null {
  const handle = (t as unknown as { _handle?: { verifyError?: () => Error | null } })._handle;
  if (typeof handle?.verifyError !== 'function') return 'cannot read the certificate verification result';
  const err = handle.verifyError();
  if (err !== null && err !== undefined) return (err as NodeJS.ErrnoException).code ?? err.message;
  return t.getPeerCertificate().subject === undefined ? 'no client certificate' : null;
}

/** Bytes of the buffer a READ of `length` is answered with (what the budget is charged). */
function readReplySize(length: number, structured: boolean): number {
  if (!structured) return SIMPLE_REPLY_SIZE + length;
  return length === 0 ? CHUNK_HEADER_SIZE : CHUNK_HEADER_SIZE + 8 + length;
}

/**
 * A request in flight: what its reply needs, copied out of the connection's `req`. Records are
 * reused (a connection never holds more than MAX_IN_FLIGHT of them).
 */
class InFlight implements RequestHeader {
  flags = 0;
  type = 0;
  readonly cookie = Buffer.alloc(8);
  offset = 0;
  length = 0;
  /** performance.now() when the request was complete (service time starts there). */
  start = 0;
  /** READ: the reply buffer the export is filling (header already encoded). */
  reply: Buffer | undefined = undefined;
  /** Bytes charged to the buffer budget for this request (its reply or its payload). */
  charge = 0;
}

export class NbdConnection implements BudgetHolder {
  state: State = State.CLIENT_FLAGS;
  /** Where the client is (for logs). */
  peer = '';
  /** Date.now() at accept (the handshake deadline runs from here). */
  readonly acceptedAt = Date.now();
  /** Socket reads and reply flushes so far: the sweep's measure of progress. */
  progress = 0;
  private progressSeen = -1;
  private progressAt = 0;
  /** Bytes charged to the server's buffer budget (BudgetHolder). */
  held = 0;
  /** Charge of the request being parsed or executed (moves to InFlight or `charged`). */
  private charge = 0;
  /** Charges of replies written and not yet taken by the socket, in write order. */
  private readonly charged: number[] = [];
  private chargedHead = 0;
  private budgetGone = false;
  /** REQ_WAIT: the charge asked for. */
  private waitingFor = 0;
  /** The raw socket under a TLSSocket, destroyed with it. */
  private raw: Socket | undefined;
  private input: Socket;
  private output: Socket;
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
  /** performance.now() when the current request was complete. */
  private reqStart = 0;

  // Requests in flight (see the ordering rule in the header).
  private inFlight = 0;
  /** WRITE / WRITE_ZEROES in flight: 0 or 1, since one stops the parser. */
  private writesInFlight = 0;
  private readonly spare: InFlight[] = [];
  /** Why the connection is in CLOSING (logged when it finally closes). */
  private closeWhy = '';

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
    input: Socket,
    output: Socket,
    readonly id: number,
    private readonly log: Logger,
    private readonly opts: ConnectionOptions = NO_TLS,
  ) {
    this.input = input;
    this.output = output;
    this.neg = new Negotiator(host, (b) => this.send(b), opts.tls !== undefined ? opts.tlsMode : 'off');
  }

  /** Sends the greeting and starts reading. */
  start(): void {
    const c = this.host.counters;
    c.connections_accepted++;
    c.connections_active++;
    this.attach();
    this.send(encodeGreeting());
  }

  // Stream listeners, as fields so they can be detached from the raw socket at STARTTLS.
  private readonly onData = (chunk: Buffer): void => {
    this.progress++;
    inputSinceGc += chunk.length;
    if (inputSinceGc >= YOUNG_GC_INPUT_BYTES) { inputSinceGc = 0; youngGc(); }
    if (this.ending()) return; // nothing more is parsed once closing
    this.queue.push(chunk);
    this.pump();
  };
  private readonly onEnd = (): void => this.onInputEnd();
  private readonly onError = (e: Error): void => this.onStreamError(e);
  private readonly onCloseEvent = (): void => this.onClose();
  private readonly onDrain = (): void => {
    this.progress++;
    if (!this.blocked || this.output.writableLength > OUTPUT_HIGH_WATER) return;
    this.blocked = false;
    this.pump();
  };
  /** Write callback of a charged reply: the socket has it, give its charge back. */
  private readonly onChargedFlush = (): void => {
    if (this.budgetGone) return;
    const n = this.charged[this.chargedHead++]!;
    if (this.chargedHead === this.charged.length) { this.charged.length = 0; this.chargedHead = 0; }
    this.progress++;
    this.host.budget.give(this, n);
  };

  private attach(): void {
    this.input.on('data', this.onData);
    this.input.on('end', this.onEnd);
    this.input.on('error', this.onError);
    this.input.on('close', this.onCloseEvent);
    if (this.output !== this.input) {
      this.output.on('error', this.onError);
      this.output.on('close', this.onCloseEvent);
    }
    this.output.on('drain', this.onDrain);
  }

  private detach(): void {
    for (const s of this.input === this.output ? [this.input] : [this.input, this.output]) {
      s.off('data', this.onData);
      s.off('end', this.onEnd);
      s.off('error', this.onError);
      s.off('close', this.onCloseEvent);
      s.off('drain', this.onDrain);
    }
  }

  // ---- limits (read by the server's sweep) ---------------------------------------------------

  /** Still in the option phase (the handshake deadline applies). */
  get negotiating(): boolean { return this.exp === undefined && !this.ending(); }

  /**
   * Since when (Date.now()) this connection has been stuck on its client: a request partly
   * received, or replies the client does not read, with no progress since; 0 when it is not.
   * Called by the sweep, which is what makes `progress` a clock.
   */
  idleSince(now: number): number {
    const waitingOnClient = this.exp !== undefined && !this.ending() && (
      this.blocked || this.state === State.REQ_PAYLOAD || this.state === State.REQ_DRAIN ||
      (this.state === State.REQ_HEADER && this.queue.length > 0));
    if (!waitingOnClient) { this.progressSeen = -1; return 0; }
    if (this.progress !== this.progressSeen) { this.progressSeen = this.progress; this.progressAt = now; }
    return this.progressAt;
  }

  /** Closed by a limit (handshake deadline, idle timeout, eviction): logged by the server. */
  timeOut(): void {
    this.state = State.CLOSED;
    this.destroy();
  }

  /** BudgetHolder: the charge this connection waited for is reserved (REQ_WAIT ends). */
  granted(): void {
    if (this.state !== State.REQ_WAIT) return; // closed meanwhile: forget() gave it back
    const r = this.req;
    this.charge = this.waitingFor;
    this.waitingFor = 0;
    if (r.type === CMD.WRITE) {
      this.state = State.REQ_PAYLOAD;
    } else {
      this.state = State.REQ_HEADER;
      this.output.cork();
      try { this.execute(EMPTY); } finally { this.output.uncork(); }
    }
    this.pump();
  }

  /**
   * Graceful stop: answer every request already received in full (in flight or still queued),
   * then close. A request that is half received is abandoned when the client sends nothing more
   * (the server's shutdown timer destroys the connection).
   */
  shutdown(): void {
    if (this.ending()) return;
    this.shuttingDown = true;
    if (this.state !== State.REQ_PAYLOAD && this.state !== State.REQ_DRAIN) {
      this.pump();
      // Blocked or parked: pump() finishes once it has caught up (after 'drain' or a completion).
      if (!this.ending() && !this.blocked && !this.parked()) this.finish('server shutdown');
    }
  }

  /** Hard stop (shutdown timer, tests). */
  destroy(): void {
    this.input.destroy();
    if (this.output !== this.input) this.output.destroy();
    this.raw?.destroy();
  }

  // ---- the parser ---------------------------------------------------------------------------

  /** Runs the state machine over queued input until it needs more bytes, blocks, or closes. */
  private pump(): void {
    if (this.pumping || this.ending()) return;
    this.pumping = true;
    this.output.cork();
    try {
      while (!this.blocked && !this.parked() && !this.ending() && this.step()) { /* next unit */ }
    } finally {
      this.pumping = false;
      this.output.uncork();
    }
    if (this.ending()) return;
    if (this.state === State.TLS_HANDSHAKE) { this.beginTls(); return; }
    if (this.blocked || this.parked()) this.input.pause();
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
        this.reqStart = performance.now();
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
        this.reqStart = performance.now();
        this.replyError(this.pendingErrno);
        this.observe(this.host.counters.latency.other);
        this.state = State.REQ_HEADER;
        return true;
      }
      case State.TLS_HANDSHAKE:
      case State.REQ_WAIT:
      case State.CLOSING:
      case State.CLOSED:
        return false;
    }
  }

  /**
   * STARTTLS was answered and the ACK has left the cork: wrap the raw stream(s) in a TLSSocket,
   * which from now on is both input and output. Options resume inside TLS once it is 'secure'.
   */
  private beginTls(): void {
    const creds = this.opts.tls!;
    const rawIn = this.input;
    const rawOut = this.output;
    this.detach();
    let t;
    try {
      t = startTls(rawIn, rawOut, creds);
    } catch (e) {
      this.host.counters.tls_handshake_failed++;
      this.log.error('cannot start TLS', { cause: e });
      this.state = State.CLOSED;
      rawIn.destroy();
      rawOut.destroy();
      return;
    }
    // The raw socket(s) go with the TLS socket (a net.Server counts its connection until the raw one closes).
    this.raw = rawIn;
    if (rawOut !== rawIn) t.once('close', () => rawOut.destroy());
    t.once('close', () => rawIn.destroy());
    this.input = t;
    this.output = t;
    this.attach();
    t.once('secure', () => {
      if (this.isClosed()) return;
      const refused = creds.socketOptions.requestCert === true ? peerVerifyError(t) : null;
      if (refused !== null) {
        this.host.counters.tls_handshake_failed++;
        this.note('TLS client certificate refused', { why: refused });
        this.state = State.CLOSED;
        this.destroy();
        return;
      }
      this.host.counters.tls_handshakes++;
      this.neg.tlsStarted();
      this.log.debug('TLS established', { kind: creds.kind, protocol: t.getProtocol(), cipher: t.getCipher()?.name });
      this.state = State.OPT_HEADER;
      this.pump();
    });
  }

  private afterOption(outcome: OptionOutcome): boolean {
    const refusal = this.neg.lastRefusal;
    if (refusal?.reply === REP.ERR_TLS_REQD) this.host.counters.tls_refused++;
    if (outcome === 'starttls') {
      // The ACK is queued (corked); pump() releases it, then calls beginTls().
      if (this.queue.length > 0) return this.protocolError('data after STARTTLS before the TLS handshake');
      this.state = State.TLS_HANDSHAKE;
      return false;
    }
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
    this.reqStart = performance.now();
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
        if (r.length === 0) {
          this.replyOk();
          this.observe(this.host.counters.latency.write);
        } else if (r.length > PAYLOAD_SCRATCH && !this.takeBudget(r.length)) {
          return false; // REQ_WAIT: the payload is not read until granted()
        }
      } else {
        this.pendingErrno = errno;
        this.skipLeft = r.length;
        this.state = State.REQ_DRAIN;
      }
      return true;
    }
    if (errno !== ERRNO.OK) {
      this.replyError(errno);
      this.observe(this.host.counters.latency.other);
    } else {
      if (r.type === CMD.READ && !this.takeBudget(readReplySize(r.length, this.ctx.structured))) return false;
      this.execute(EMPTY);
    }
    return true;
  }

  /**
   * Charges `bytes` for the current request; when they do not fit, parks in REQ_WAIT (granted()
   * resumes) and returns false.
   */
  private takeBudget(bytes: number): boolean {
    if (this.host.budget.take(this, bytes)) {
      this.charge = bytes;
      return true;
    }
    this.waitingFor = bytes;
    this.state = State.REQ_WAIT;
    return false;
  }

  // ---- commands -----------------------------------------------------------------------------

  /**
   * Runs a validated request (payload: the WRITE data, else empty). A synchronous answer is
   * replied to at once; a Promise puts the request in flight (startInFlight).
   */
  private execute(payload: Buffer): void {
    const r = this.req;
    const e = this.exp!;
    const lat = this.host.counters.latency;
    let hist = lat.other;
    try {
      switch (r.type) {
        case CMD.READ:
          hist = lat.read_ram;
          if (!this.read(e)) return; // in flight
          break;
        case CMD.WRITE: {
          hist = lat.write;
          let res = e.write(r.offset, payload);
          if ((r.flags & CMDF.FUA) !== 0 && e.store.persistent) res = durably(e, res);
          if (typeof res !== 'number') return this.startInFlight(res, undefined);
          this.writeDone(r, res);
          break;
        }
        case CMD.FLUSH:
          // Every write received before this FLUSH has completed: a synchronous one is applied
          // before its reply, and the parser does not run while one is in flight (parked()).
          // Checked, because answering a FLUSH early would lie about durability.
          if (this.writesInFlight !== 0) throw new Error(`FLUSH parsed with ${this.writesInFlight} write(s) in flight`);
          // Durable mode: answered once the journal is on the medium (one fdatasync shared with
          // every FLUSH of any connection that arrives meanwhile). Otherwise there is no medium
          // that outlives the process: completed writes are all a FLUSH can promise (docs/NBD.md).
          if (e.store.persistent) return this.startInFlight(durably(e, ERRNO.OK), undefined);
          this.replyOk();
          break;
        case CMD.CACHE:  // a hint; pages in the disk tier are not prefetched (a later READ reads them)
          this.replyOk();
          break;
        case CMD.TRIM:
          e.trim(r.offset, r.length);
          if ((r.flags & CMDF.FUA) !== 0 && e.store.persistent) return this.startInFlight(durably(e, ERRNO.OK), undefined);
          this.replyOk();
          break;
        case CMD.WRITE_ZEROES: {
          hist = lat.write;
          let res = e.zero(r.offset, r.length, (r.flags & CMDF.NO_HOLE) !== 0);
          if ((r.flags & CMDF.FUA) !== 0 && e.store.persistent) res = durably(e, res);
          if (typeof res !== 'number') return this.startInFlight(res, undefined);
          this.replyStatus(res);
          break;
        }
        case CMD.BLOCK_STATUS:
          this.blockStatus(e);
          break;
        default:
          this.replyError(ERRNO.EINVAL); // unreachable: validateRequest refuses unknown types
      }
    } catch (err) {
      this.replyError(errnoForError(err, this.log, { cmd: CMD_NAMES[r.type] ?? String(r.type), offset: r.offset, length: r.length }), true);
    }
    // A WRITE payload the store has taken, or a READ reply that was never sent (error).
    if (this.charge !== 0) { this.host.budget.give(this, this.charge); this.charge = 0; }
    this.observe(hist);
  }

  /** Queues a READ's reply, or puts it in flight; returns false when it is in flight. */
  private read(e: NbdExport): boolean {
    const r = this.req;
    let b: Buffer;
    let dst: Buffer;
    if (this.ctx.structured) {
      if (r.length === 0) {
        this.send(encodeChunk(CHUNK_FLAG_DONE, CHUNK.NONE, r.cookie, 0));
        return true; // execute() gives the (header-sized) charge back
      }
      // One OFFSET_DATA chunk covering the whole request (so DF is always honoured).
      b = encodeChunk(CHUNK_FLAG_DONE, CHUNK.OFFSET_DATA, r.cookie, 8 + r.length);
      b.writeUInt32BE(Math.floor(r.offset / 0x100000000), CHUNK_HEADER_SIZE);
      b.writeUInt32BE(r.offset >>> 0, CHUNK_HEADER_SIZE + 4);
      dst = b.subarray(CHUNK_HEADER_SIZE + 8);
    } else {
      b = encodeSimpleReply(0, r.cookie, r.length);
      dst = b.subarray(SIMPLE_REPLY_SIZE);
    }
    const res = e.read(r.offset, dst);
    if (res !== undefined) {
      this.startInFlight(res as Promise<void>, b);
      return false;
    }
    this.readDone(r, b, this.charge);
    this.charge = 0;
    return true;
  }

  /** Sends a READ reply; its charge is given back when the socket has taken it. */
  private readDone(r: RequestHeader, reply: Buffer, charge: number): void {
    this.host.counters.bytes_read += r.length;
    if (charge === 0) { this.send(reply); return; }
    if (this.state === State.CLOSED || !this.output.writable) { this.host.budget.give(this, charge); return; }
    this.charged.push(charge);
    this.output.write(reply, this.onChargedFlush);
    if (this.output.writableLength > OUTPUT_HIGH_WATER) this.blocked = true;
  }

  private writeDone(r: RequestHeader, errno: WireErrno): void {
    if (errno === ERRNO.OK) this.host.counters.bytes_written += r.length;
    this.replyStatus(errno, r);
  }

  // ---- requests in flight -------------------------------------------------------------------

  /** The parser must wait: at the in-flight bound, or behind a write in flight (ordering rule). */
  private parked(): boolean {
    return this.inFlight >= MAX_IN_FLIGHT || this.writesInFlight !== 0 || this.state === State.REQ_WAIT || this.state === State.TLS_HANDSHAKE;
  }

  /** Copies what the reply needs out of `req` and answers when `pending` settles. */
  private startInFlight(pending: Promise<unknown>, reply: Buffer | undefined): void {
    const r = this.req;
    const p = this.spare.pop() ?? new InFlight();
    p.flags = r.flags;
    p.type = r.type;
    p.cookie.set(r.cookie);
    p.offset = r.offset;
    p.length = r.length;
    p.start = this.reqStart;
    p.reply = reply;
    p.charge = this.charge;
    this.charge = 0;
    this.inFlight++;
    if (r.type !== CMD.READ) this.writesInFlight++;
    pending.then((v) => this.settle(p, v, undefined, false), (err: unknown) => this.settle(p, undefined, err, true));
  }

  /**
   * An in-flight request settled: queue its reply (unless the client is gone), then either resume
   * the parser or, in CLOSING, close once nothing is left in flight. Never throws (it runs in a
   * Promise callback, where a throw would be an unhandled rejection).
   */
  private settle(p: InFlight, value: unknown, err: unknown, failed: boolean): void {
    this.inFlight--;
    if (p.type !== CMD.READ) this.writesInFlight--;
    try {
      const what = { cmd: CMD_NAMES[p.type] ?? String(p.type), offset: p.offset, length: p.length };
      if (this.isClosed()) {
        // The client is gone: nothing to answer. A failure is still a failure of the store.
        if (failed) errnoForError(err, this.log, what);
        else this.log.debug('reply dropped, connection closed', what);
      } else {
        if (failed) this.replyError(errnoForError(err, this.log, what), true, p);
        else if (p.type === CMD.READ) { this.readDone(p, p.reply!, p.charge); p.charge = 0; }
        else if (p.type === CMD.WRITE) this.writeDone(p, value as WireErrno);
        else this.replyStatus(value as WireErrno, p);
        const lat = this.host.counters.latency;
        this.observe(p.type === CMD.READ ? lat.read_tier : lat.write, p.start);
      }
    } catch (e) {
      this.log.error('internal error completing a request', { cause: e });
      this.state = State.CLOSED;
      this.destroy();
    }
    // A payload the store has taken, a reply not sent; after close, forget() gave it back already.
    if (p.charge !== 0 && !this.budgetGone) this.host.budget.give(this, p.charge);
    p.charge = 0;
    p.reply = undefined;
    this.spare.push(p);
    if (this.state === State.CLOSING) {
      if (this.inFlight === 0) this.close(this.closeWhy);
    } else if (!this.isClosed()) {
      this.pump(); // the parser may have been parked on this request
    }
  }

  /** Records the service time of a request complete at `start` whose reply was just queued. */
  private observe(h: LatencyHistogram, start = this.reqStart): void {
    h.observe((performance.now() - start) / 1000);
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

  // `r`: the request answered, `req` unless it was in flight.
  private replyOk(r: RequestHeader = this.req): void {
    this.send(encodeSimpleReply(ERRNO.OK, r.cookie));
  }

  private replyStatus(errno: WireErrno, r: RequestHeader = this.req): void {
    if (errno === ERRNO.OK) this.replyOk(r);
    else this.replyError(errno, true, r);
  }

  /**
   * Error reply: a structured ERROR chunk where the command's replies must be structured (READ and
   * BLOCK_STATUS once structured replies are on), else a simple reply. `logged`: the cause was
   * already logged (store failures), so only count it.
   */
  private replyError(errno: WireErrno, logged = false, r: RequestHeader = this.req): void {
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
  /** No more requests are parsed: CLOSING (in-flight replies still go out) or CLOSED. */
  private ending(): boolean { return this.state === State.CLOSING || this.state === State.CLOSED; }

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

  /**
   * Stops parsing (unparsed input is discarded) and closes; with requests in flight, waits in
   * CLOSING until the last of them is answered (settle() then calls close()).
   */
  private finish(why: string): void {
    if (this.ending()) return;
    this.queue.clear();
    this.input.pause();
    if (this.inFlight > 0) {
      this.state = State.CLOSING;
      this.closeWhy = why;
      this.log.debug('closing after in-flight replies', { why, in_flight: this.inFlight });
      return;
    }
    this.close(why);
  }

  /** Flushes queued replies, then closes both streams. */
  private close(why: string): void {
    this.state = State.CLOSED;
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
   * are backed up or the parser is parked behind requests in flight, it finishes after 'drain' or
   * the completion (pump() calls endAfterInput()); requests still in flight then are answered in
   * CLOSING before the close.
   */
  private onInputEnd(): void {
    this.inputEnded = true;
    if (this.state === State.TLS_HANDSHAKE) {
      // The client gave up after STARTTLS (e.g. it had no key for its user): nothing to answer.
      this.host.counters.handshake_aborted++;
      this.host.counters.tls_handshake_failed++;
      this.finish('client closed during the TLS handshake');
      return;
    }
    if (this.ending() || this.blocked || this.parked()) return; // pump() ends it once caught up
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
    if (this.state === State.TLS_HANDSHAKE) {
      this.host.counters.tls_handshake_failed++;
      this.note('TLS handshake failed', { cause: e });
    }
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
    this.budgetGone = true;
    this.charge = 0;
    this.host.budget.forget(this);
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

/** Durable mode's FLUSH and FUA: `res` (a write's outcome), answered once the store's flush is done. */
function durably(e: NbdExport, res: WireErrno | Promise<WireErrno>): Promise<WireErrno> {
  return Promise.resolve(res).then((x) => (x !== ERRNO.OK ? x : e.store.sync().then(() => ERRNO.OK)));
}
