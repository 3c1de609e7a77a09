/**
 * The option phase of fixed-newstyle NBD: what each option means and how it is answered. The byte
 * framing (greeting, client flags, option headers, skipping oversized options) is connection.ts's
 * job; this file receives one complete option at a time, already length-checked, and answers it.
 *
 * State kept per connection across options: whether structured replies were negotiated, and the
 * meta contexts selected by SET_META_CONTEXT (with the export they were selected for: GO on another
 * export discards them, as the spec requires).
 *
 * Outcome of an option:
 *   'continue'  stay in the option phase (also after every error reply, including a failed GO)
 *   'transmit'  GO succeeded or EXPORT_NAME found its export: enter transmission with `export`
 *   'starttls'  STARTTLS answered ACK: the connection must run the TLS handshake on the raw stream
 *               next, then call tlsStarted() and go on with options inside TLS
 *   'close'     ABORT answered, or EXPORT_NAME named an unknown export (no error reply exists), or
 *               EXPORT_NAME without TLS while TLS is required
 *
 * TLS (tls.ts): with mode 'require', until STARTTLS has succeeded every option but STARTTLS and
 * ABORT is answered ERR_TLS_REQD, the spec's rule for a server that insists on TLS. STARTTLS resets
 * what was negotiated in plaintext (structured replies, meta contexts), as the spec requires.
 */
import type { NbdExport } from './export.js';
import type { TlsMode } from './tls.js';
import {
  BLOCK_MIN, INFO, MAX_PAYLOAD, MAX_STRING, META_BASE_ALLOCATION, META_ID_BASE_ALLOCATION, OPT, REP, TF,
  encodeOptionReply,
} from './protocol.js';

export type OptionOutcome = 'continue' | 'transmit' | 'starttls' | 'close';

/** What the negotiator needs from the server: the exports, looked up by name. */
export interface ExportDirectory {
  findExport(name: string): NbdExport | undefined;
  listExports(): readonly NbdExport[];
}

/** Why an option was refused, for the connection's log line. */
export interface OptionRefusal { opt: number; reply: number; why: string }

export class Negotiator {
  /** Structured replies negotiated (STRUCTURED_REPLY answered ACK). */
  structured = false;
  /** base:allocation selected, for the export named `metaExport`. */
  metaAllocation = false;
  private metaExport: string | null = null;
  /** Set by 'transmit'. */
  export: NbdExport | undefined;
  /** Transmission flags for `export`, computed for this connection. */
  transmissionFlags = 0;
  /** Set by the last refused option (for logging), cleared by the next success. */
  lastRefusal: OptionRefusal | null = null;
  /** TLS is up on this connection (STARTTLS answered and the TLS handshake done). */
  tlsActive = false;

  constructor(
    private readonly dir: ExportDirectory,
    private readonly send: (b: Buffer) => void,
    /** This listener's TLS policy ('off' when no credentials are loaded). */
    private readonly tlsMode: TlsMode = 'off',
  ) {}

  /** Answers one complete option. `data` is valid only during the call. */
  handle(opt: number, data: Buffer): OptionOutcome {
    this.lastRefusal = null;
    if (opt === OPT.STARTTLS) return this.startTls(opt, data);
    if (this.tlsMode === 'require' && !this.tlsActive && opt !== OPT.ABORT) {
      if (opt === OPT.EXPORT_NAME) {
        this.lastRefusal = { opt, reply: REP.ERR_TLS_REQD, why: 'EXPORT_NAME without TLS while TLS is required (disconnect)' };
        return 'close';
      }
      return this.refuse(opt, REP.ERR_TLS_REQD, 'TLS is required: send STARTTLS first');
    }
    switch (opt) {
      case OPT.EXPORT_NAME: return this.exportName(data);
      case OPT.ABORT:
        this.reply(opt, REP.ACK);
        return 'close';
      case OPT.LIST: return this.list(opt, data);
      case OPT.INFO:
      case OPT.GO: return this.infoGo(opt, data);
      case OPT.STRUCTURED_REPLY:
        if (data.length !== 0) return this.refuse(opt, REP.ERR_INVALID, 'STRUCTURED_REPLY takes no data');
        this.structured = true;
        this.reply(opt, REP.ACK);
        return 'continue';
      case OPT.LIST_META_CONTEXT:
      case OPT.SET_META_CONTEXT: return this.metaContext(opt, data);
      default:
        // EXTENDED_HEADERS (experimental) and anything unknown.
        return this.refuse(opt, REP.ERR_UNSUP, 'unsupported option');
    }
  }

  /** The TLS handshake after STARTTLS succeeded: forget what was negotiated in plaintext. */
  tlsStarted(): void {
    this.tlsActive = true;
    this.structured = false;
    this.metaAllocation = false;
    this.metaExport = null;
  }

  /** Reply to an option that was too large to buffer (its data was skipped). */
  tooBig(opt: number): OptionOutcome {
    // As in handle(): a refusal left by an earlier option must not be taken for this one's.
    this.lastRefusal = null;
    if (opt === OPT.EXPORT_NAME) {
      // No export has a name that long: the same protocol error as any unknown name.
      this.lastRefusal = { opt, reply: 0, why: 'EXPORT_NAME longer than any export name (disconnect)' };
      return 'close';
    }
    return this.refuse(opt, REP.ERR_TOO_BIG, 'option data too large');
  }

  // ---- options ----------------------------------------------------------------------------

  private startTls(opt: number, data: Buffer): OptionOutcome {
    if (this.tlsMode === 'off') return this.refuse(opt, REP.ERR_UNSUP, 'TLS is not configured on this server');
    if (data.length !== 0) return this.refuse(opt, REP.ERR_INVALID, 'STARTTLS takes no data');
    if (this.tlsActive) return this.refuse(opt, REP.ERR_INVALID, 'TLS is already active');
    this.reply(opt, REP.ACK);
    return 'starttls';
  }

  private exportName(data: Buffer): OptionOutcome {
    const e = data.length <= MAX_STRING ? this.dir.findExport(data.toString('utf8')) : undefined;
    if (e === undefined) {
      this.lastRefusal = { opt: OPT.EXPORT_NAME, reply: 0, why: 'unknown export (EXPORT_NAME: disconnect)' };
      return 'close';
    }
    this.enter(e);
    return 'transmit';
  }

  private list(opt: number, data: Buffer): OptionOutcome {
    if (data.length !== 0) return this.refuse(opt, REP.ERR_INVALID, 'LIST takes no data');
    for (const e of this.dir.listExports()) {
      const name = Buffer.from(e.name, 'utf8');
      const desc = Buffer.from(e.description, 'utf8');
      const body = Buffer.allocUnsafe(4 + name.length + desc.length);
      body.writeUInt32BE(name.length, 0);
      name.copy(body, 4);
      desc.copy(body, 4 + name.length);
      this.reply(opt, REP.SERVER, body);
    }
    this.reply(opt, REP.ACK);
    return 'continue';
  }

  /** INFO and GO: u32 namelen, name, u16 n, n × u16 info request. */
  private infoGo(opt: number, data: Buffer): OptionOutcome {
    if (data.length < 6) return this.refuse(opt, REP.ERR_INVALID, 'INFO/GO data too short');
    const nameLen = data.readUInt32BE(0);
    if (nameLen > data.length - 6 || nameLen > MAX_STRING) return this.refuse(opt, REP.ERR_INVALID, 'INFO/GO name length');
    const nReq = data.readUInt16BE(4 + nameLen);
    if (data.length !== 6 + nameLen + 2 * nReq) return this.refuse(opt, REP.ERR_INVALID, 'INFO/GO length mismatch');
    const name = data.toString('utf8', 4, 4 + nameLen);
    const e = this.dir.findExport(name);
    if (e === undefined) return this.refuse(opt, REP.ERR_UNKNOWN, `unknown export "${name.slice(0, 64)}"`);

    const flags = this.flagsFor(e);
    let wantName = false, wantDesc = false, wantBlock = false;
    for (let i = 0; i < nReq; i++) {
      const t = data.readUInt16BE(6 + nameLen + 2 * i);
      if (t === INFO.NAME) wantName = true;
      else if (t === INFO.DESCRIPTION) wantDesc = true;
      else if (t === INFO.BLOCK_SIZE) wantBlock = true;
      // INFO.EXPORT is always sent; unknown types are ignored.
    }
    const ex = Buffer.allocUnsafe(12);
    ex.writeUInt16BE(INFO.EXPORT, 0);
    ex.writeBigUInt64BE(BigInt(e.size), 2);
    ex.writeUInt16BE(flags, 10);
    this.reply(opt, REP.INFO, ex);
    if (wantName) {
      const n = Buffer.from(e.name, 'utf8');
      const b = Buffer.allocUnsafe(2 + n.length);
      b.writeUInt16BE(INFO.NAME, 0);
      n.copy(b, 2);
      this.reply(opt, REP.INFO, b);
    }
    if (wantDesc && e.description !== '') {
      const d = Buffer.from(e.description, 'utf8');
      const b = Buffer.allocUnsafe(2 + d.length);
      b.writeUInt16BE(INFO.DESCRIPTION, 0);
      d.copy(b, 2);
      this.reply(opt, REP.INFO, b);
    }
    if (wantBlock) {
      const b = Buffer.allocUnsafe(14);
      b.writeUInt16BE(INFO.BLOCK_SIZE, 0);
      b.writeUInt32BE(BLOCK_MIN, 2);
      b.writeUInt32BE(e.pageSize, 6);
      b.writeUInt32BE(MAX_PAYLOAD, 10);
      this.reply(opt, REP.INFO, b);
    }
    this.reply(opt, REP.ACK);
    if (opt === OPT.INFO) return 'continue';
    this.enter(e);
    return 'transmit';
  }

  /**
   * LIST/SET_META_CONTEXT: u32 namelen, name, u32 nq, nq × {u32 len, query}. We know one context,
   * base:allocation. LIST with no queries, or with the query "base:" or "base:allocation", lists it
   * (id 0); SET with the query "base:allocation" selects it (id META_ID_BASE_ALLOCATION). Queries in
   * other namespaces are ignored; SET replaces the previous selection.
   */
  private metaContext(opt: number, data: Buffer): OptionOutcome {
    if (!this.structured) return this.refuse(opt, REP.ERR_INVALID, 'meta contexts need structured replies');
    if (data.length < 8) return this.refuse(opt, REP.ERR_INVALID, 'meta context data too short');
    const nameLen = data.readUInt32BE(0);
    if (nameLen > data.length - 8 || nameLen > MAX_STRING) return this.refuse(opt, REP.ERR_INVALID, 'meta context name length');
    const name = data.toString('utf8', 4, 4 + nameLen);
    const nq = data.readUInt32BE(4 + nameLen);
    // Walk the queries once to validate framing before answering anything.
    let pos = 8 + nameLen;
    let match = false;
    for (let i = 0; i < nq; i++) {
      if (data.length - pos < 4) return this.refuse(opt, REP.ERR_INVALID, 'meta context query truncated');
      const ql = data.readUInt32BE(pos);
      if (ql > MAX_STRING || ql > data.length - pos - 4) return this.refuse(opt, REP.ERR_INVALID, 'meta context query length');
      const q = data.toString('utf8', pos + 4, pos + 4 + ql);
      if (q === META_BASE_ALLOCATION || (opt === OPT.LIST_META_CONTEXT && q === 'base:')) match = true;
      pos += 4 + ql;
    }
    if (pos !== data.length) return this.refuse(opt, REP.ERR_INVALID, 'meta context trailing data');
    if (this.dir.findExport(name) === undefined) return this.refuse(opt, REP.ERR_UNKNOWN, `unknown export "${name.slice(0, 64)}"`);

    if (opt === OPT.LIST_META_CONTEXT) {
      if (nq === 0 || match) this.reply(opt, REP.META_CONTEXT, metaContextBody(0));
    } else {
      this.metaAllocation = match;
      this.metaExport = name;
      if (match) this.reply(opt, REP.META_CONTEXT, metaContextBody(META_ID_BASE_ALLOCATION));
    }
    this.reply(opt, REP.ACK);
    return 'continue';
  }

  // ---- helpers ----------------------------------------------------------------------------

  private enter(e: NbdExport): void {
    if (this.metaExport !== e.name) this.metaAllocation = false;
    this.export = e;
    this.transmissionFlags = this.flagsFor(e);
  }

  /** Transmission flags: per connection, since SEND_DF depends on structured replies. */
  private flagsFor(e: NbdExport): number {
    let f = TF.HAS_FLAGS | TF.SEND_FLUSH | TF.SEND_FUA | TF.SEND_CACHE | TF.CAN_MULTI_CONN;
    if (e.readOnly) f |= TF.READ_ONLY;
    else f |= TF.SEND_TRIM | TF.SEND_WRITE_ZEROES | TF.SEND_FAST_ZERO;
    if (this.structured) f |= TF.SEND_DF;
    return f;
  }

  private reply(opt: number, type: number, data?: Uint8Array): void {
    this.send(encodeOptionReply(opt, type, data));
  }

  private refuse(opt: number, type: number, why: string): OptionOutcome {
    this.lastRefusal = { opt, reply: type, why };
    this.reply(opt, type, Buffer.from(why, 'utf8'));
    return 'continue';
  }
}

function metaContextBody(id: number): Buffer {
  const name = Buffer.from(META_BASE_ALLOCATION, 'utf8');
  const b = Buffer.allocUnsafe(4 + name.length);
  b.writeUInt32BE(id, 0);
  name.copy(b, 4);
  return b;
}
