/**
 * STARTTLS option haggling byte by byte (the spec's rules, which real clients do not all
 * exercise): under --tls=require every option but STARTTLS and ABORT gets ERR_TLS_REQD and
 * EXPORT_NAME disconnects; STARTTLS with data is ERR_INVALID; after the TLS handshake (Node's TLS
 * client with a PSK) structured replies negotiated in plaintext are forgotten, a second STARTTLS is
 * ERR_INVALID, and the export serves data; with --tls=off STARTTLS is ERR_UNSUP; a client that
 * stalls inside the TLS handshake is closed by the handshake deadline.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { PageStore } from '../../src/core/page-store.js';
import { silentLogger } from '../../src/frontends/log.js';
import { NbdServer } from '../../src/frontends/nbd/server.js';
import { loadPsk, parsePskFile } from '../../src/frontends/nbd/tls.js';

const PS = 4096;
const KEY = Buffer.from('00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff', 'hex');
const IHAVEOPT = 0x49484156454f5054n;
const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, GO: 7, STRUCTURED_REPLY: 8, SET_META_CONTEXT: 10 };
const REP = { ACK: 1, SERVER: 2, INFO: 3, ERR_UNSUP: 0x80000001, ERR_INVALID: 0x80000003, ERR_TLS_REQD: 0x80000005 };

/** Exact-length reads over any duplex (a unix socket, then the TLS socket over it). */
class Wire {
  private buf = Buffer.alloc(0);
  private ended = false;
  private wake: (() => void) | null = null;
  constructor(readonly s: Duplex) {
    s.on('data', (d: Buffer) => { this.buf = Buffer.concat([this.buf, d]); this.kick(); });
    s.on('end', () => { this.ended = true; this.kick(); });
    s.on('close', () => { this.ended = true; this.kick(); });
    s.on('error', () => { this.ended = true; this.kick(); });
  }
  private kick(): void { const w = this.wake; this.wake = null; w?.(); }
  /** Stops reading (before the socket is handed to TLS). */
  detach(): void { this.s.removeAllListeners('data'); this.s.removeAllListeners('end'); this.s.removeAllListeners('close'); this.s.removeAllListeners('error'); }
  async read(n: number): Promise<Buffer | null> {
    while (this.buf.length < n) {
      if (this.ended) return null;
      await new Promise<void>((r) => { this.wake = r; });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
  async closed(): Promise<boolean> {
    while (!this.ended) await new Promise<void>((r) => { this.wake = r; });
    return true;
  }
  option(opt: number, data: Buffer = Buffer.alloc(0)): void {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(IHAVEOPT, 0);
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(data.length, 12);
    this.s.write(Buffer.concat([h, data]));
  }
  /** A transmission request: magic, no flags, `type` (0 READ, 1 WRITE), `cookie`, offset 0, `length`; then `payload`. */
  request(type: number, cookie: bigint, length: number, payload: Buffer = Buffer.alloc(0)): void {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(type, 6);
    h.writeBigUInt64BE(cookie, 8);
    h.writeUInt32BE(length, 24);
    this.s.write(Buffer.concat([h, payload]));
  }
  async reply(): Promise<{ opt: number; type: number; data: Buffer } | null> {
    const h = await this.read(20);
    if (h === null) return null;
    const data = await this.read(h.readUInt32BE(16));
    return data === null ? null : { opt: h.readUInt32BE(8), type: h.readUInt32BE(12), data };
  }
}

function goData(name: string): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(4 + n.length + 2);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  return b;
}

describe('NBD STARTTLS', () => {
  let dir: string;
  let server: NbdServer;
  let requirePath: string;
  let offPath: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'zdedup-starttls-'));
    const pskFile = join(dir, 'keys.psk');
    writeFileSync(pskFile, `alice:${KEY.toString('hex')}\n`, { mode: 0o600 });
    const store = new PageStore({ pageSize: PS, codec: 'lz4' });
    server = new NbdServer({
      store, pageSize: PS, log: silentLogger, tls: loadPsk(pskFile),
      limits: { handshakeTimeoutMs: 300 }, exports: [{ name: '', size: 1 << 20 }],
    });
    requirePath = join(dir, 'req.sock');
    offPath = join(dir, 'off.sock');
    await server.listenUnix(requirePath, { tls: 'require' });
    await server.listenUnix(offPath, { tls: 'off' });
  });
  after(async () => {
    await server.close(500);
    rmSync(dir, { recursive: true, force: true });
  });

  async function open(path: string): Promise<Wire> {
    const s = net.connect(path);
    await new Promise((r, j) => { s.once('connect', r); s.once('error', j); });
    const w = new Wire(s);
    const g = await w.read(18);
    assert.equal(g?.readUInt16BE(16), 3, 'FIXED_NEWSTYLE | NO_ZEROES');
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(3);
    s.write(flags);
    return w;
  }

  test('require: ERR_TLS_REQD before STARTTLS; STARTTLS with data ERR_INVALID; inside TLS plaintext state is reset and data flows', async () => {
    const w = await open(requirePath);
    for (const opt of [OPT.LIST, OPT.STRUCTURED_REPLY, OPT.GO, 99]) {
      w.option(opt, opt === OPT.GO ? goData('') : Buffer.alloc(0));
      const r = await w.reply();
      assert.equal(r?.type, REP.ERR_TLS_REQD, `option ${opt} before STARTTLS`);
      assert.equal(r?.opt, opt);
    }
    w.option(OPT.STARTTLS, Buffer.from('x'));
    assert.equal((await w.reply())?.type, REP.ERR_INVALID, 'STARTTLS takes no data');
    const refusedBefore = server.counters.tls_refused;
    assert.ok(refusedBefore >= 4);
    w.option(OPT.STARTTLS);
    const ack = await w.reply();
    assert.equal(ack?.type, REP.ACK);
    w.detach();
    const t = tls.connect({
      socket: w.s as net.Socket,
      pskCallback: () => ({ psk: KEY, identity: 'alice' }),
      ciphers: 'ECDHE-PSK-CHACHA20-POLY1305:TLS_AES_128_GCM_SHA256',
      checkServerIdentity: () => undefined,
    });
    await new Promise<void>((resolve, reject) => { t.once('secureConnect', () => resolve()); t.once('error', reject); });
    const s = new Wire(t);
    s.option(OPT.STARTTLS);
    assert.equal((await s.reply())?.type, REP.ERR_INVALID, 'TLS is already active');
    s.option(OPT.LIST);
    const list = await s.reply();
    assert.equal(list?.type, REP.SERVER, 'options work inside TLS');
    assert.equal((await s.reply())?.type, REP.ACK);
    // GO without STRUCTURED_REPLY inside TLS: no SEND_DF, simple replies.
    s.option(OPT.GO, goData(''));
    let flags = -1;
    for (;;) {
      const r = await s.reply();
      assert.ok(r !== null);
      if (r.type === REP.INFO && r.data.readUInt16BE(0) === 0) flags = r.data.readUInt16BE(10);
      if (r.type === REP.ACK) break;
    }
    assert.equal(flags & (1 << 7), 0, 'no SEND_DF: structured replies were not negotiated inside TLS');
    s.request(1, 1n, PS, Buffer.alloc(PS, 0x5a));
    const wr = await s.read(16);
    assert.equal(wr?.readUInt32BE(4), 0, 'WRITE over TLS');
    s.request(0, 2n, PS);
    const h = await s.read(16);
    assert.equal(h?.readUInt32BE(0), 0x67446698, 'a simple reply');
    assert.deepEqual(await s.read(PS), Buffer.alloc(PS, 0x5a));
    assert.ok(server.counters.tls_handshakes >= 1);
    t.destroy();
  });

  test('require: EXPORT_NAME without TLS disconnects; ABORT is still answered', async () => {
    const a = await open(requirePath);
    a.option(OPT.ABORT);
    assert.equal((await a.reply())?.type, REP.ACK);
    const e = await open(requirePath);
    const before = server.counters.tls_refused;
    e.option(OPT.EXPORT_NAME, Buffer.alloc(0));
    assert.equal(await e.closed(), true);
    assert.equal(server.counters.tls_refused, before + 1);
  });

  test('off: STARTTLS is ERR_UNSUP and plaintext works', async () => {
    const w = await open(offPath);
    w.option(OPT.STARTTLS);
    assert.equal((await w.reply())?.type, REP.ERR_UNSUP);
    w.option(OPT.LIST);
    assert.equal((await w.reply())?.type, REP.SERVER);
    w.s.destroy();
  });

  test('a client that stalls inside the TLS handshake is closed by the handshake deadline', async () => {
    const before = server.counters.handshake_timeouts;
    const w = await open(requirePath);
    w.option(OPT.STARTTLS);
    assert.equal((await w.reply())?.type, REP.ACK);
    w.s.write(Buffer.from([0x16, 0x03, 0x01])); // the first bytes of a ClientHello, then nothing
    assert.equal(await w.closed(), true);
    assert.equal(server.counters.handshake_timeouts, before + 1);
  });

  test('psktool key files: user:hex lines parsed, malformed lines refused with their number', () => {
    const m = parsePskFile('# keys\nalice:00ff\n\nbob:0a0b0c\n', 'f');
    assert.deepEqual([...m.keys()], ['alice', 'bob']);
    assert.deepEqual(m.get('bob'), Buffer.from([10, 11, 12]));
    assert.throws(() => parsePskFile('alice:xyz\n', 'f'), /f line 1: expected username:hexkey/);
    assert.throws(() => parsePskFile('alice:00\nalice:01\n', 'f'), /appears twice/);
    assert.throws(() => parsePskFile('\n', 'f'), /no keys/);
  });
});
