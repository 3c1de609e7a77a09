/**
 * A raw NBD client for tests that must put exact (and wrong) bytes on the wire: an exact-length
 * async reader over a socket, and helpers for the handshake and requests. Big-endian throughout.
 */
import net from 'node:net';

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const OPT_REPLY_MAGIC = 0x0003e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

export class RawClient {
  private chunks: Buffer[] = [];
  private have = 0;
  private ended = false;
  private waiter: (() => void) | null = null;
  readonly sock: net.Socket;

  private constructor(sock: net.Socket) {
    this.sock = sock;
    sock.on('data', (d: Buffer) => { this.chunks.push(d); this.have += d.length; this.wake(); });
    sock.on('end', () => { this.ended = true; this.wake(); });
    sock.on('close', () => { this.ended = true; this.wake(); });
    sock.on('error', () => { this.ended = true; this.wake(); });
  }

  static connect(path: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect(path);
      s.once('connect', () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  /** Exactly n bytes, or null if the server closed first. */
  async read(n: number): Promise<Buffer | null> {
    while (this.have < n) {
      if (this.ended) return null;
      await new Promise<void>((r) => { this.waiter = r; });
    }
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.have -= n;
    return out;
  }

  /** Resolves true once the server has closed the connection (all data it sent is discarded). */
  async closedByServer(): Promise<true> {
    while (!this.ended) await new Promise<void>((r) => { this.waiter = r; });
    return true;
  }

  write(b: Uint8Array): void {
    if (!this.sock.destroyed) this.sock.write(b);
  }

  end(): void { this.sock.end(); }
  destroy(): void { this.sock.destroy(); }

  // ---- handshake ------------------------------------------------------------------------------

  /** Reads and checks the 18-byte greeting; returns the handshake flags. */
  async greeting(): Promise<number> {
    const g = await this.read(18);
    if (g === null) throw new Error('no greeting');
    if (g.readBigUInt64BE(0) !== NBDMAGIC || g.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('bad greeting magic');
    return g.readUInt16BE(16);
  }

  sendOption(opt: number, data: Uint8Array = Buffer.alloc(0), lengthOverride?: number): void {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(IHAVEOPT, 0);
    h.writeUInt32BE(opt >>> 0, 8);
    h.writeUInt32BE((lengthOverride ?? data.length) >>> 0, 12);
    this.write(Buffer.concat([h, data]));
  }

  /** One option reply (null if the server closed). */
  async optionReply(): Promise<{ opt: number; type: number; data: Buffer } | null> {
    const h = await this.read(20);
    if (h === null) return null;
    if (h.readBigUInt64BE(0) !== OPT_REPLY_MAGIC) throw new Error('bad option reply magic');
    const len = h.readUInt32BE(16);
    if (len > 1 << 20) throw new Error(`option reply length ${len}`);
    const data = await this.read(len);
    if (data === null) return null;
    return { opt: h.readUInt32BE(8), type: h.readUInt32BE(12), data };
  }

  /** Greeting + client flags + [STRUCTURED_REPLY] [SET_META_CONTEXT base:allocation] + GO. Returns the size. */
  async handshake(exportName: string, opts: { structured?: boolean; meta?: boolean } = {}): Promise<{ size: bigint; flags: number }> {
    await this.greeting();
    this.write(u32(3)); // FIXED_NEWSTYLE | NO_ZEROES
    if (opts.structured) {
      this.sendOption(8);
      const r = await this.optionReply();
      if (r?.type !== 1) throw new Error('STRUCTURED_REPLY refused');
    }
    const name = Buffer.from(exportName, 'utf8');
    if (opts.meta) {
      const q = Buffer.from('base:allocation');
      this.sendOption(10, Buffer.concat([u32(name.length), name, u32(1), u32(q.length), q]));
      for (;;) {
        const r = await this.optionReply();
        if (r === null) throw new Error('closed during SET_META_CONTEXT');
        if (r.type === 1) break;
        if (r.type !== 4) throw new Error(`SET_META_CONTEXT reply ${r.type}`);
      }
    }
    this.sendOption(7, Buffer.concat([u32(name.length), name, u16(0)]));
    let size = -1n;
    let flags = 0;
    for (;;) {
      const r = await this.optionReply();
      if (r === null) throw new Error('closed during GO');
      if (r.type === 3 && r.data.readUInt16BE(0) === 0) {
        size = r.data.readBigUInt64BE(2);
        flags = r.data.readUInt16BE(10);
      } else if (r.type === 1) {
        break;
      } else if (r.type >= 0x80000000) {
        throw new Error(`GO refused: 0x${r.type.toString(16)}`);
      }
    }
    return { size, flags };
  }

  // ---- transmission ---------------------------------------------------------------------------

  request(type: number, flags: number, cookie: bigint, offset: bigint, length: number, payload?: Uint8Array): void {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(flags & 0xffff, 4);
    h.writeUInt16BE(type & 0xffff, 6);
    h.writeBigUInt64BE(cookie, 8);
    h.writeBigUInt64BE(offset, 16);
    h.writeUInt32BE(length >>> 0, 24);
    this.write(payload ? Buffer.concat([h, payload]) : h);
  }

  /** A simple reply: {error, cookie}; `dataLength` bytes of READ data follow when error is 0. */
  async simpleReply(dataLength = 0): Promise<{ error: number; cookie: bigint; data: Buffer } | null> {
    const h = await this.read(16);
    if (h === null) return null;
    if (h.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) throw new Error(`expected a simple reply, magic 0x${h.readUInt32BE(0).toString(16)}`);
    const error = h.readUInt32BE(4);
    const data = error === 0 && dataLength > 0 ? await this.read(dataLength) : Buffer.alloc(0);
    if (data === null) return null;
    return { error, cookie: h.readBigUInt64BE(8), data };
  }

  /** One structured chunk. */
  async chunk(): Promise<{ flags: number; type: number; cookie: bigint; payload: Buffer } | null> {
    const h = await this.read(20);
    if (h === null) return null;
    if (h.readUInt32BE(0) !== STRUCTURED_REPLY_MAGIC) throw new Error(`expected a structured chunk, magic 0x${h.readUInt32BE(0).toString(16)}`);
    const len = h.readUInt32BE(16);
    const payload = await this.read(len);
    if (payload === null) return null;
    return { flags: h.readUInt16BE(4), type: h.readUInt16BE(6), cookie: h.readBigUInt64BE(8), payload };
  }
}

export function u32(v: number): Buffer { const b = Buffer.alloc(4); b.writeUInt32BE(v >>> 0); return b; }
export function u16(v: number): Buffer { const b = Buffer.alloc(2); b.writeUInt16BE(v & 0xffff); return b; }
