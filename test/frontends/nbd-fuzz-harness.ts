/**
 * A structure-aware fuzzer of the NBD server (issue 8): fast-check generates whole client sessions
 * (client flags, option-phase messages, transmission requests, where the byte stream is cut into
 * socket writes, how the client leaves), each is played against the real in-process NbdServer
 * over a real unix socket, and every byte the server sends back is checked against a reference
 * model written here from the protocol (docs/NBD.md, NetworkBlockDevice doc/proto.md), not from
 * the server's code.
 *
 *   Session ──encode──▶ client byte stream ──cut at random points──▶ socket ──▶ NbdServer
 *      │                       │                                               │
 *      │                       ▼                                               ▼
 *      │              Reference.run(stream)  ─ expected replies, close ─▶ compared byte for byte
 *      │                       │ applies accepted WRITE/TRIM/WRITE_ZEROES
 *      ▼                       ▼
 *   verifier connections read back the touched range ──▶ equal to the DiskModel
 *
 * The model parses the stream exactly as a server must (whole units only, so the cut points cannot
 * change anything), which is what makes mutations cheap to check: a wrong option length, a bad
 * magic, a WRITE whose payload is shorter than its header says, all desynchronise the stream in a
 * way the model follows byte for byte. Everything runs in RAM (no tier), so every request is
 * answered synchronously and replies come in request order: the check is exact.
 *
 * Invariants checked per session:
 *  - the server never throws (uncaught exceptions, unhandled rejections) and logs no error line;
 *  - every fully sent option gets exactly its replies (option echoed, types in order, INFO and
 *    LIST payloads exact), every fully sent request exactly one reply with its cookie, the errno
 *    the validation table prescribes and, for READ and BLOCK_STATUS, the data and extents of the
 *    model; nothing more is sent;
 *  - the connection is closed exactly when the protocol says (bad magic, unknown client flags,
 *    EXPORT_NAME of an unknown export, ABORT, DISC, the client's half-close), and a protocol
 *    violation is counted in protocol_errors exactly once;
 *  - afterwards a clean client reads back exactly what the model of the accepted writes says.
 * At the end of a run: every export read back whole (data and BLOCK_STATUS), no connection left.
 */
import fc from 'fast-check';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PageStore } from '../../src/core/page-store.js';
import { Logger } from '../../src/frontends/log.js';
import { NbdServer } from '../../src/frontends/nbd/server.js';
import { RawClient } from '../integration/nbd/raw-client.js';

// ---------------------------------------------------------------------------------------------
// The protocol, written down again from the spec (the oracle does not import the server's tables)
// ---------------------------------------------------------------------------------------------

const PS = 4096;
const IHAVEOPT = 0x49484156454f5054n;
const OPT_REPLY_MAGIC = 0x0003e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_MAGIC = 0x67446698;
const STRUCTURED_MAGIC = 0x668e33ef;
const MAX_OPTION_DATA = 64 * 1024;
const MAX_STRING = 4096;
const MAX_PAYLOAD = 32 * 1024 * 1024;

const O = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, INFO: 6, GO: 7, SR: 8, LIST_META: 9, SET_META: 10, EXT_HEADERS: 11 };
const R = { ACK: 1, SERVER: 2, INFO: 3, META: 4, ERR_UNSUP: 0x80000001, ERR_INVALID: 0x80000003, ERR_UNKNOWN: 0x80000006, ERR_TOO_BIG: 0x80000009 };
const C = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WZ: 6, BS: 7 };
const F = { FUA: 1, NO_HOLE: 2, DF: 4, REQ_ONE: 8, FAST_ZERO: 16 };
const E = { OK: 0, EPERM: 1, EINVAL: 22, ENOSPC: 28 };
/** Flags each command accepts (index = command type). */
const ALLOWED = [F.FUA | F.DF, F.FUA, F.FUA, F.FUA, F.FUA, F.FUA, F.FUA | F.NO_HOLE | F.FAST_ZERO, F.FUA | F.REQ_ONE];
const CHUNK_NONE = 0, CHUNK_DATA = 1, CHUNK_BS = 5, CHUNK_ERROR = 0x8001, DONE = 1;

interface ExportDef { name: string; size: number; readOnly: boolean; description: string }
/** Sizes that are not page multiples on purpose: the last page is reachable only in part. */
export const EXPORTS: readonly ExportDef[] = [
  { name: '', size: 96 * PS + 777, readOnly: false, description: 'scratch' },
  { name: 'small', size: 3 * PS + 100, readOnly: false, description: '' },
  { name: 'ro', size: 16 * PS, readOnly: true, description: 'read-only, known content' },
];
const NAMES = EXPORTS.map((e) => e.name);

function transmissionFlags(e: ExportDef, structured: boolean): number {
  // HAS_FLAGS SEND_FLUSH SEND_FUA CAN_MULTI_CONN SEND_CACHE, + READ_ONLY or TRIM WRITE_ZEROES FAST_ZERO, + DF with SR
  let f = 1 | 4 | 8 | 256 | 1024;
  f |= e.readOnly ? 2 : 32 | 64 | 2048;
  if (structured) f |= 128;
  return f;
}

// ---------------------------------------------------------------------------------------------
// The data model: bytes and page kinds of one export
// ---------------------------------------------------------------------------------------------

const HOLE = 0, ZERO_PAGE = 1, DATA = 2;

export class DiskModel {
  readonly pages: number;
  constructor(readonly size: number, readonly bytes = new Uint8Array(size), readonly kind = new Uint8Array(Math.ceil(size / PS))) {
    this.pages = Math.ceil(size / PS);
  }
  clone(): DiskModel { return new DiskModel(this.size, this.bytes.slice(), this.kind.slice()); }

  private recompute(p: number): void {
    const b = this.bytes.subarray(p * PS, Math.min((p + 1) * PS, this.size));
    let zero = true;
    for (let i = 0; i < b.length; i++) if (b[i] !== 0) { zero = false; break; }
    this.kind[p] = zero ? ZERO_PAGE : DATA;
  }
  /** A page is whole in [off, end) when the range covers it up to its end or up to the export's end. */
  private whole(p: number, off: number, end: number): boolean {
    return p * PS >= off && Math.min((p + 1) * PS, this.size) <= end;
  }

  write(off: number, data: Uint8Array): void {
    if (data.length === 0) return;
    this.bytes.set(data, off);
    for (let p = Math.floor(off / PS); p <= Math.floor((off + data.length - 1) / PS); p++) this.recompute(p);
  }
  /** TRIM: whole pages become holes; partial edge pages are kept. */
  trim(off: number, len: number): void {
    const end = off + len;
    for (let p = Math.floor(off / PS); p < this.pages && p * PS < end; p++) {
      if (!this.whole(p, off, end)) continue;
      this.bytes.fill(0, p * PS, Math.min((p + 1) * PS, this.size));
      this.kind[p] = HOLE;
    }
  }
  /** WRITE_ZEROES: whole pages become holes (zero pages with NO_HOLE); edges are zeroed, a hole stays a hole. */
  zero(off: number, len: number, noHole: boolean): void {
    const end = off + len;
    for (let p = Math.floor(off / PS); p < this.pages && p * PS < end; p++) {
      const from = Math.max(off, p * PS), to = Math.min(end, (p + 1) * PS, this.size);
      this.bytes.fill(0, from, to);
      if (this.whole(p, off, end)) this.kind[p] = noHole ? ZERO_PAGE : HOLE;
      else if (this.kind[p] !== HOLE) this.recompute(p);
    }
  }
  /** base:allocation extents for [off, off+len): runs of equal page state, clipped to the request. */
  extents(off: number, len: number, reqOne: boolean): Array<[number, number]> {
    const end = off + len;
    const out: Array<[number, number]> = [];
    let p = Math.floor(off / PS);
    let start = off;
    const last = Math.floor((end - 1) / PS);
    while (p <= last) {
      const k = this.kind[p]!;
      let q = p + 1;
      while (q <= last && this.kind[q] === k) q++;
      const stop = Math.min(q * PS, end);
      out.push([stop - start, k === HOLE ? 3 : k === ZERO_PAGE ? 2 : 0]);
      if (reqOne) break;
      start = stop;
      p = q;
    }
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// Sessions: what fast-check generates
// ---------------------------------------------------------------------------------------------

export interface OptSpec {
  opt: number;
  data: Uint8Array;
  /** XOR into one byte of the magic (0: intact). */
  magicXor: number;
  magicByte: number;
  /** Added to the length field (desynchronises the stream); 'huge': > 64 KiB and really sent. */
  lenDelta: number | 'huge';
}

export interface ReqSpec {
  type: number;
  flags: number;
  cookie: bigint;
  off: { k: 'frac'; v: number } | { k: 'page'; v: number } | { k: 'end'; v: number } | { k: 'past'; v: number } | { k: 'abs'; v: bigint };
  len: { k: 'small'; v: number } | { k: 'pages'; v: number; d: number } | { k: 'toEnd'; d: number } | { k: 'abs'; v: number };
  payload: { k: 'zero' | 'fill' | 'word' | 'rand' | 'dup'; seed: number };
  magicXor: number;
  /** Bytes added to (or removed from) a WRITE's payload: desynchronises the stream. */
  payloadDelta: number;
}

export interface Session {
  /** Name the session aims at (offsets are generated relative to its size). */
  target: string;
  clientFlags: number;
  options: OptSpec[];
  requests: ReqSpec[];
  /** Cut points (fractions of the stream) where the stream is split into separate socket writes. */
  cuts: number[];
  /** Bytes dropped from the end of the stream (a truncated last unit). */
  truncate: number;
  /** How the client leaves once it has every reply: half-close, or vanish. */
  tail: 'end' | 'destroy';
}

const u32 = (v: number): Buffer => { const b = Buffer.alloc(4); b.writeUInt32BE(v >>> 0); return b; };
const u16 = (v: number): Buffer => { const b = Buffer.alloc(2); b.writeUInt16BE(v & 0xffff); return b; };

const nameArb = fc.oneof(
  { weight: 8, arbitrary: fc.constantFrom(...NAMES) },
  { weight: 1, arbitrary: fc.constantFrom('nope', 'SMALL', 'small\0', 'ró') },
  { weight: 1, arbitrary: fc.string({ maxLength: 12 }) },
  { weight: 1, arbitrary: fc.constant('n'.repeat(MAX_STRING + 1)) },
);

const junkArb = fc.uint8Array({ minLength: 1, maxLength: 24 });

function goBody(name: string, infos: number[], nameLenDelta: number, countDelta: number, trailing: Uint8Array): Buffer {
  const n = Buffer.from(name, 'utf8');
  return Buffer.concat([u32(n.length + nameLenDelta), n, u16(infos.length + countDelta), ...infos.map(u16), trailing]);
}

function metaBody(name: string, queries: string[], countDelta: number, trailing: Uint8Array): Buffer {
  const n = Buffer.from(name, 'utf8');
  const qs = queries.map((q) => { const b = Buffer.from(q, 'utf8'); return Buffer.concat([u32(b.length), b]); });
  return Buffer.concat([u32(n.length), n, u32(queries.length + countDelta), ...qs, trailing]);
}

/** A fraction in [0, 1), uniform (fc.double favours extreme values, which here would all mean 0). */
const fracArb = fc.integer({ min: 0, max: 0xffff }).map((v) => v / 0x10000);

const deltaArb = fc.oneof({ weight: 12, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: -3, max: 3 }) });
const trailingArb = fc.oneof({ weight: 12, arbitrary: fc.constant(new Uint8Array(0)) }, { weight: 1, arbitrary: junkArb });

/** A well-formed option body for `opt`, or one with a field off by a little. */
function optionArb(name: fc.Arbitrary<string>, entering = true): fc.Arbitrary<{ opt: number; data: Uint8Array }> {
  const go = fc.tuple(entering ? fc.constantFrom(O.GO, O.INFO) : fc.constant(O.INFO), name, fc.array(fc.oneof(fc.constantFrom(0, 1, 2, 3), fc.integer({ min: 0, max: 0xffff })), { maxLength: 5 }), deltaArb, deltaArb, trailingArb)
    .map(([opt, n, infos, d1, d2, t]) => ({ opt, data: goBody(n, infos, d1, d2, t) }));
  const meta = fc.tuple(fc.constantFrom(O.SET_META, O.LIST_META), name,
    fc.array(fc.constantFrom('base:allocation', 'base:', 'qemu:dirty-bitmap:x', 'base:allocatio', ''), { maxLength: 3 }), deltaArb, trailingArb)
    .map(([opt, n, qs, d, t]) => ({ opt, data: metaBody(n, qs, d, t) }));
  const empty = fc.tuple(entering ? fc.constantFrom(O.SR, O.LIST, O.STARTTLS, O.ABORT, O.EXT_HEADERS) : fc.constantFrom(O.SR, O.LIST, O.STARTTLS, O.EXT_HEADERS), fc.oneof({ weight: 6, arbitrary: fc.constant(new Uint8Array(0)) }, { weight: 1, arbitrary: junkArb }))
    .map(([opt, data]) => ({ opt, data }));
  const exportName = name.map((n) => ({ opt: O.EXPORT_NAME, data: Buffer.from(n, 'utf8') as Uint8Array }));
  const unknown = fc.tuple(fc.oneof(fc.constantFrom(0, 4, 12, 0x7fffffff, 0xffffffff), fc.nat()), fc.uint8Array({ maxLength: 16 }))
    .map(([opt, data]) => ({ opt, data }));
  return fc.oneof(
    { weight: 4, arbitrary: go }, { weight: 3, arbitrary: meta }, { weight: 4, arbitrary: empty },
    { weight: 1, arbitrary: unknown }, ...(entering ? [{ weight: 1, arbitrary: exportName }] : []),
  );
}

/** Sometimes mangles the framing of an option: magic, or its length field. */
function mutated(o: fc.Arbitrary<{ opt: number; data: Uint8Array }>, rate: number): fc.Arbitrary<OptSpec> {
  const none = fc.constant({ magicXor: 0, magicByte: 0, lenDelta: 0 as number | 'huge' });
  const some = fc.oneof(
    fc.record({ magicXor: fc.integer({ min: 1, max: 255 }), magicByte: fc.integer({ min: 0, max: 7 }), lenDelta: fc.constant(0 as number | 'huge') }),
    fc.record({ magicXor: fc.constant(0), magicByte: fc.constant(0), lenDelta: fc.oneof(fc.integer({ min: -8, max: 40 }), fc.constant('huge' as const)) }),
  );
  return fc.tuple(o, fc.oneof({ weight: rate, arbitrary: none }, { weight: 1, arbitrary: some }))
    .map(([x, m]) => ({ ...x, ...m }));
}

const offArb: fc.Arbitrary<ReqSpec['off']> = fc.oneof(
  { weight: 6, arbitrary: fracArb.map((v) => ({ k: 'frac' as const, v })) },
  { weight: 4, arbitrary: fc.nat(100).map((v) => ({ k: 'page' as const, v })) },
  { weight: 2, arbitrary: fc.nat(5000).map((v) => ({ k: 'end' as const, v })) },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 1 << 20 }).map((v) => ({ k: 'past' as const, v })) },
  { weight: 1, arbitrary: fc.oneof(fc.constantFrom(2n ** 53n - 1n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })).map((v) => ({ k: 'abs' as const, v })) },
);
const lenArb: fc.Arbitrary<ReqSpec['len']> = fc.oneof(
  { weight: 6, arbitrary: fc.nat(9000).map((v) => ({ k: 'small' as const, v })) },
  { weight: 4, arbitrary: fc.tuple(fc.nat(24), fc.integer({ min: -2, max: 2 })).map(([v, d]) => ({ k: 'pages' as const, v, d })) },
  { weight: 2, arbitrary: fc.integer({ min: -3, max: 3 }).map((d) => ({ k: 'toEnd' as const, d })) },
  { weight: 1, arbitrary: fc.constantFrom(MAX_PAYLOAD, MAX_PAYLOAD + 1, 0xffffffff, 1 << 30).map((v) => ({ k: 'abs' as const, v })) },
);

function flagsFor(type: fc.Arbitrary<number>): fc.Arbitrary<[number, number]> {
  return fc.tuple(type, fc.oneof(
    { weight: 5, arbitrary: fc.constant(-1) },            // a valid combination for the type
    { weight: 1, arbitrary: fc.integer({ min: 0, max: 31 }) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) },
  ), fc.nat()).map(([t, f, r]) => [t, f === -1 ? (ALLOWED[t] ?? 0) & r : f]);
}

const typeArb = fc.oneof(
  { weight: 6, arbitrary: fc.constant(C.READ) }, { weight: 6, arbitrary: fc.constant(C.WRITE) },
  { weight: 2, arbitrary: fc.constant(C.TRIM) }, { weight: 2, arbitrary: fc.constant(C.WZ) },
  { weight: 2, arbitrary: fc.constant(C.BS) }, { weight: 1, arbitrary: fc.constantFrom(C.FLUSH, C.CACHE) },
  { weight: 1, arbitrary: fc.integer({ min: 8, max: 0xffff }) },
);

function requestArb(mutationRate: number): fc.Arbitrary<ReqSpec> {
  return fc.record({
    tf: flagsFor(typeArb),
    cookie: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
    off: offArb,
    len: lenArb,
    payload: fc.record({ k: fc.constantFrom('zero', 'fill', 'word', 'rand', 'dup'), seed: fc.nat() }),
    magicXor: fc.oneof({ weight: mutationRate, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 0xffffffff }) }),
    payloadDelta: fc.oneof({ weight: mutationRate, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: -6, max: 6 }) }),
  }).map(({ tf, ...r }) => ({ ...r, type: tf[0], flags: tf[1] }));
}

/**
 * Sessions. "client": a handshake a real client would do (maybe SR and base:allocation, some
 * option noise, GO or EXPORT_NAME), then a batch of requests, rarely mutated. "chaos": any options,
 * often mangled, and a few requests.
 */
export function sessionArb(): fc.Arbitrary<Session> {
  const tail = fc.record({
    cuts: fc.array(fracArb, { maxLength: 8, size: 'max' }),
    truncate: fc.oneof({ weight: 8, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 40 }) }),
    tail: fc.constantFrom('end' as const, 'destroy' as const),
  });
  const client = fc.constantFrom(...NAMES).chain((target) => fc.record({
    target: fc.constant(target),
    clientFlags: fc.oneof({ weight: 8, arbitrary: fc.constant(3) }, { weight: 1, arbitrary: fc.constantFrom(0, 1, 2) }),
    sr: fc.boolean(),
    meta: fc.oneof({ weight: 3, arbitrary: fc.constant(target) }, { weight: 1, arbitrary: nameArb }, { weight: 1, arbitrary: fc.constant(null) }),
    // Options a client may try before GO (none that ends the option phase), rarely mangled.
    noise: fc.array(mutated(optionArb(nameArb, false), 100), { maxLength: 3 }),
    byName: fc.oneof({ weight: 4, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
    requests: fc.array(requestArb(400), { minLength: 1, maxLength: 48, size: 'max' }),
  }).map((s) => {
    const options: OptSpec[] = [];
    const ok = { magicXor: 0, magicByte: 0, lenDelta: 0 };
    if (s.sr) options.push({ opt: O.SR, data: new Uint8Array(0), ...ok });
    if (s.meta !== null) options.push({ opt: O.SET_META, data: metaBody(s.meta, ['base:allocation'], 0, new Uint8Array(0)), ...ok });
    options.push(...s.noise);
    options.push(s.byName
      ? { opt: O.EXPORT_NAME, data: Buffer.from(target, 'utf8'), ...ok }
      : { opt: O.GO, data: goBody(target, [3], 0, 0, new Uint8Array(0)), ...ok });
    return { target, clientFlags: s.clientFlags, options, requests: s.requests };
  }));
  const chaos = fc.record({
    target: fc.constantFrom(...NAMES),
    clientFlags: fc.oneof({ weight: 10, arbitrary: fc.constant(3) }, { weight: 1, arbitrary: fc.nat() }),
    options: fc.array(mutated(optionArb(nameArb), 6), { minLength: 1, maxLength: 6 }),
    requests: fc.array(requestArb(8), { maxLength: 8 }),
  });
  return fc.tuple(fc.oneof({ weight: 7, arbitrary: client }, { weight: 3, arbitrary: chaos }), tail).map(([s, t]) => ({ ...s, ...t }));
}

// ---------------------------------------------------------------------------------------------
// Encoding a session to bytes
// ---------------------------------------------------------------------------------------------

function xorshift(seed: number): () => number {
  let x = (seed >>> 0) || 0x9e3779b9;
  return () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x; };
}

/** A payload of `len` bytes: zeroes, one byte, one repeated word, random, or a copy of a page seen before (dedup). */
function payloadBytes(p: ReqSpec['payload'], len: number): Buffer {
  const b = Buffer.alloc(len);
  const rnd = xorshift(p.seed);
  switch (p.k) {
    case 'zero': break;
    case 'fill': b.fill((p.seed % 255) + 1); break;
    case 'word': { const w = u32(rnd() | 1); for (let i = 0; i < len; i++) b[i] = w[i & 3]!; break; }
    case 'rand': for (let i = 0; i < len; i++) b[i] = rnd() & 0xff; break;
    case 'dup': { const page = Buffer.from(`page ${p.seed % 7} `.repeat(600)); for (let i = 0; i < len; i++) b[i] = page[i % PS]!; break; }
  }
  return b;
}

/** The largest WRITE payload a session sends unless it asks for the rare drained giant. */
const WRITE_CAP = 70_000;

function resolveOffset(o: ReqSpec['off'], size: number): bigint {
  switch (o.k) {
    case 'frac': return BigInt(Math.floor(o.v * size));
    case 'page': return BigInt(o.v * PS);
    case 'end': return BigInt(Math.max(0, size - o.v));
    case 'past': return BigInt(size + o.v);
    case 'abs': return o.v;
  }
}

function resolveLength(l: ReqSpec['len'], off: bigint, size: number): number {
  switch (l.k) {
    case 'small': return l.v;
    case 'pages': return Math.max(0, l.v * PS + l.d);
    case 'toEnd': return Math.max(0, Math.min(0xffffffff, size - Number(off > BigInt(size) ? BigInt(size) : off) + l.d));
    case 'abs': return l.v;
  }
}

export interface Encoded {
  stream: Buffer;
  /** Drained WRITEs larger than MAX_PAYLOAD in the stream (each costs 32 MiB of bytes). */
  giants: number;
}

export function encodeSession(s: Session): Encoded {
  const parts: Buffer[] = [u32(s.clientFlags)];
  for (const o of s.options) {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(IHAVEOPT, 0);
    if (o.magicXor !== 0) h[o.magicByte] ^= o.magicXor;
    h.writeUInt32BE(o.opt >>> 0, 8);
    let data = Buffer.from(o.data);
    if (o.lenDelta === 'huge') data = Buffer.concat([data, Buffer.alloc(MAX_OPTION_DATA + 1 - Math.min(data.length, MAX_OPTION_DATA + 1), 0x41)]);
    const len = o.lenDelta === 'huge' ? data.length : Math.max(0, data.length + o.lenDelta);
    h.writeUInt32BE(len, 12);
    parts.push(h, data);
  }
  const size = EXPORTS.find((e) => e.name === s.target)?.size ?? 16 * PS;
  let giants = 0;
  for (const r of s.requests) {
    const h = Buffer.alloc(28);
    h.writeUInt32BE((REQUEST_MAGIC ^ r.magicXor) >>> 0, 0);
    h.writeUInt16BE(r.flags, 4);
    h.writeUInt16BE(r.type, 6);
    h.writeBigUInt64BE(r.cookie, 8);
    const off = resolveOffset(r.off, size);
    h.writeBigUInt64BE(off, 16);
    let len = resolveLength(r.len, off, size);
    let giant = false;
    if (r.type === C.WRITE && len > WRITE_CAP) {
      // A WRITE longer than the maximum payload must be drained by the server: worth sending rarely.
      giant = len === MAX_PAYLOAD + 1 && (r.payload.seed % 64) === 0;
      if (giant) giants++;
      else len %= WRITE_CAP;
    }
    h.writeUInt32BE(len >>> 0, 24);
    parts.push(h);
    const sent = Math.max(0, len + r.payloadDelta);
    if (r.type === C.WRITE) parts.push(giant ? Buffer.alloc(sent) : payloadBytes(r.payload, sent));
  }
  let stream = Buffer.concat(parts);
  if (s.truncate > 0) stream = stream.subarray(0, Math.max(0, stream.length - s.truncate));
  return { stream, giants };
}

// ---------------------------------------------------------------------------------------------
// The reference: what a server must answer to a byte stream
// ---------------------------------------------------------------------------------------------

type Check = (d: Buffer) => string | null;
export type Expect =
  | { k: 'opt'; opt: number; type: number; check?: Check }
  | { k: 'enter'; size: number; flags: number; zeroes: boolean }
  | { k: 'simple'; cookie: bigint; errno: number; data?: Buffer }
  | { k: 'chunk'; cookie: bigint; type: number; flags: number; check: Check };

export interface Outcome {
  expects: Expect[];
  /** The server closes the connection by itself (protocol error, ABORT, DISC). */
  closed: boolean;
  protocolError: boolean;
  /** The export entered and its model, updated by the session (when writable). */
  entered: string | null;
  disk: DiskModel | null;
  options: number;
  requests: number;
  /** The stream ends inside a unit (the client leaves mid-option or mid-request). */
  midUnit: boolean;
  /** Byte range of the export the session changed, [from, to). */
  dirty: [number, number] | null;
  /** Where the server stops reading when it closes by itself (the end of the unit that closes it). */
  closeAt: number;
}

const bytesEq = (want: Uint8Array): Check => (d) => (Buffer.compare(d, want) === 0 ? null : `payload ${d.toString('hex').slice(0, 80)} != ${Buffer.from(want).toString('hex').slice(0, 80)}`);

function validate(type: number, flags: number, off: number, len: number, ctx: { size: number; ro: boolean; sr: boolean; meta: boolean }): number {
  if (type >= ALLOWED.length) return E.EINVAL;
  if ((flags & ~ALLOWED[type]!) !== 0) return E.EINVAL;
  if ((flags & F.DF) !== 0 && !ctx.sr) return E.EINVAL;
  if (type === C.FLUSH) return off !== 0 || len !== 0 ? E.EINVAL : E.OK;
  if (type === C.BS && (!ctx.sr || !ctx.meta)) return E.EINVAL;
  if ((type === C.READ || type === C.WRITE) && len > MAX_PAYLOAD) return E.EINVAL;
  if (type === C.BS && len === 0) return E.EINVAL;
  if (off + len > ctx.size) return type === C.WRITE || type === C.WZ ? E.ENOSPC : E.EINVAL;
  if ((type === C.WRITE || type === C.TRIM || type === C.WZ) && ctx.ro) return E.EPERM;
  return E.OK;
}

export function reference(stream: Buffer, disks: ReadonlyMap<string, DiskModel>): Outcome {
  const out: Outcome = { expects: [], closed: false, protocolError: false, entered: null, disk: null, options: 0, requests: 0, midUnit: false, dirty: null, closeAt: stream.length };
  const ex = out.expects;
  let pos = 0;
  const left = (): number => stream.length - pos;
  /** A protocol violation: the server closes once it has read the offending unit (`unit` more bytes). */
  const fail = (unit = 0): Outcome => { out.closed = true; out.protocolError = true; out.closeAt = pos + unit; return out; };

  if (left() < 4) { out.midUnit = left() > 0; return out; }
  const cflags = stream.readUInt32BE(pos); pos += 4;
  if ((cflags & ~3) !== 0) return fail();
  const noZeroes = (cflags & 2) !== 0;

  // ---- option phase ----
  let sr = false, meta = false, metaExport: string | null = null;
  let entered: ExportDef | undefined;
  const refuse = (opt: number, type: number): void => { ex.push({ k: 'opt', opt, type }); };
  while (entered === undefined) {
    if (left() < 16) { out.midUnit = left() > 0; return out; }
    if (stream.readBigUInt64BE(pos) !== IHAVEOPT) return fail(16);
    const opt = stream.readUInt32BE(pos + 8);
    const len = stream.readUInt32BE(pos + 12);
    pos += 16;
    if (left() < len) { out.midUnit = true; return out; }
    out.options++;
    if (len > MAX_OPTION_DATA) {
      pos += len;
      if (opt === O.EXPORT_NAME) return fail(); // no export has such a name, and EXPORT_NAME has no error reply
      refuse(opt, R.ERR_TOO_BIG);
      continue;
    }
    const data = stream.subarray(pos, pos + len);
    pos += len;
    switch (opt) {
      case O.EXPORT_NAME: {
        const e = len <= MAX_STRING ? EXPORTS.find((x) => x.name === data.toString('utf8')) : undefined;
        if (e === undefined) return fail();
        if (metaExport !== e.name) meta = false;
        entered = e;
        ex.push({ k: 'enter', size: e.size, flags: transmissionFlags(e, sr), zeroes: !noZeroes });
        break;
      }
      case O.ABORT:
        ex.push({ k: 'opt', opt, type: R.ACK });
        out.closed = true;
        out.closeAt = pos;
        return out;
      case O.LIST:
        if (len !== 0) { refuse(opt, R.ERR_INVALID); break; }
        for (const e of EXPORTS) {
          const want = Buffer.concat([u32(Buffer.byteLength(e.name)), Buffer.from(e.name), Buffer.from(e.description)]);
          ex.push({ k: 'opt', opt, type: R.SERVER, check: bytesEq(want) });
        }
        ex.push({ k: 'opt', opt, type: R.ACK });
        break;
      case O.STARTTLS: refuse(opt, R.ERR_UNSUP); break; // no TLS configured
      case O.SR:
        if (len !== 0) { refuse(opt, R.ERR_INVALID); break; }
        sr = true;
        ex.push({ k: 'opt', opt, type: R.ACK });
        break;
      case O.INFO:
      case O.GO: {
        if (len < 6) { refuse(opt, R.ERR_INVALID); break; }
        const nl = data.readUInt32BE(0);
        if (nl > len - 6 || nl > MAX_STRING) { refuse(opt, R.ERR_INVALID); break; }
        const nr = data.readUInt16BE(4 + nl);
        if (len !== 6 + nl + 2 * nr) { refuse(opt, R.ERR_INVALID); break; }
        const e = EXPORTS.find((x) => x.name === data.toString('utf8', 4, 4 + nl));
        if (e === undefined) { refuse(opt, R.ERR_UNKNOWN); break; }
        const infos = new Set<number>();
        for (let i = 0; i < nr; i++) infos.add(data.readUInt16BE(6 + nl + 2 * i));
        const info = Buffer.alloc(12);
        info.writeUInt16BE(0, 0); info.writeBigUInt64BE(BigInt(e.size), 2); info.writeUInt16BE(transmissionFlags(e, sr), 10);
        ex.push({ k: 'opt', opt, type: R.INFO, check: bytesEq(info) });
        if (infos.has(1)) ex.push({ k: 'opt', opt, type: R.INFO, check: bytesEq(Buffer.concat([u16(1), Buffer.from(e.name)])) });
        if (infos.has(2) && e.description !== '') ex.push({ k: 'opt', opt, type: R.INFO, check: bytesEq(Buffer.concat([u16(2), Buffer.from(e.description)])) });
        if (infos.has(3)) ex.push({ k: 'opt', opt, type: R.INFO, check: bytesEq(Buffer.concat([u16(3), u32(1), u32(PS), u32(MAX_PAYLOAD)])) });
        ex.push({ k: 'opt', opt, type: R.ACK });
        if (opt === O.GO) {
          if (metaExport !== e.name) meta = false;
          entered = e;
        }
        break;
      }
      case O.LIST_META:
      case O.SET_META: {
        if (!sr) { refuse(opt, R.ERR_INVALID); break; }
        if (len < 8) { refuse(opt, R.ERR_INVALID); break; }
        const nl = data.readUInt32BE(0);
        if (nl > len - 8 || nl > MAX_STRING) { refuse(opt, R.ERR_INVALID); break; }
        const name = data.toString('utf8', 4, 4 + nl);
        const nq = data.readUInt32BE(4 + nl);
        let p = 8 + nl, match = false, bad = false;
        for (let i = 0; i < nq; i++) {
          if (len - p < 4) { bad = true; break; }
          const ql = data.readUInt32BE(p);
          if (ql > MAX_STRING || ql > len - p - 4) { bad = true; break; }
          const q = data.toString('utf8', p + 4, p + 4 + ql);
          if (q === 'base:allocation' || (opt === O.LIST_META && q === 'base:')) match = true;
          p += 4 + ql;
        }
        if (bad || p !== len) { refuse(opt, R.ERR_INVALID); break; }
        if (!EXPORTS.some((x) => x.name === name)) { refuse(opt, R.ERR_UNKNOWN); break; }
        const body = (id: number): Buffer => Buffer.concat([u32(id), Buffer.from('base:allocation')]);
        if (opt === O.LIST_META) {
          if (nq === 0 || match) ex.push({ k: 'opt', opt, type: R.META, check: bytesEq(body(0)) });
        } else {
          meta = match;
          metaExport = name;
          if (match) ex.push({ k: 'opt', opt, type: R.META, check: bytesEq(body(1)) });
        }
        ex.push({ k: 'opt', opt, type: R.ACK });
        break;
      }
      default: refuse(opt, R.ERR_UNSUP);
    }
  }

  // ---- transmission ----
  out.entered = entered.name;
  const disk = entered.readOnly ? disks.get(entered.name)! : disks.get(entered.name)!.clone();
  out.disk = entered.readOnly ? null : disk;
  const ctx = { size: entered.size, ro: entered.readOnly, sr, meta };
  const touch = (from: number, to: number): void => {
    if (to <= from) return;
    out.dirty = out.dirty === null ? [from, to] : [Math.min(out.dirty[0], from), Math.max(out.dirty[1], to)];
  };
  for (;;) {
    if (left() < 28) { out.midUnit = left() > 0; return out; }
    if (stream.readUInt32BE(pos) !== REQUEST_MAGIC) return fail(28);
    const flags = stream.readUInt16BE(pos + 4);
    const type = stream.readUInt16BE(pos + 6);
    const cookie = stream.readBigUInt64BE(pos + 8);
    const off64 = stream.readBigUInt64BE(pos + 16);
    const len = stream.readUInt32BE(pos + 24);
    pos += 28;
    out.requests++;
    if (type === C.DISC) { out.closed = true; out.closeAt = pos; return out; }
    const off = off64 >= 2n ** 53n ? Infinity : Number(off64);
    const errno = validate(type, flags, off, len, ctx);
    const errorReply = (): void => {
      if (sr && (type === C.READ || type === C.BS)) {
        ex.push({ k: 'chunk', cookie, type: CHUNK_ERROR, flags: DONE, check: (d) => (d.length >= 6 && d.readUInt32BE(0) === errno && d.length === 6 + d.readUInt16BE(4) ? null : `ERROR chunk ${d.toString('hex')} for errno ${errno}`) });
      } else {
        ex.push({ k: 'simple', cookie, errno });
      }
    };
    if (type === C.WRITE) {
      if (left() < len) { out.midUnit = true; out.requests--; return out; }
      const payload = stream.subarray(pos, pos + len);
      pos += len;
      if (errno !== E.OK) { errorReply(); continue; }
      disk.write(off, payload);
      touch(off, off + len);
      ex.push({ k: 'simple', cookie, errno: 0 });
      continue;
    }
    if (errno !== E.OK) { errorReply(); continue; }
    switch (type) {
      case C.READ: {
        const data = Buffer.from(disk.bytes.subarray(off, off + len));
        if (!sr) ex.push({ k: 'simple', cookie, errno: 0, data });
        else if (len === 0) ex.push({ k: 'chunk', cookie, type: CHUNK_NONE, flags: DONE, check: (d) => (d.length === 0 ? null : 'NONE chunk with a payload') });
        else {
          const want = Buffer.concat([Buffer.alloc(8), data]);
          want.writeBigUInt64BE(BigInt(off), 0);
          ex.push({ k: 'chunk', cookie, type: CHUNK_DATA, flags: DONE, check: bytesEq(want) });
        }
        break;
      }
      case C.TRIM: disk.trim(off, len); touch(off, off + len); ex.push({ k: 'simple', cookie, errno: 0 }); break;
      case C.WZ: disk.zero(off, len, (flags & F.NO_HOLE) !== 0); touch(off, off + len); ex.push({ k: 'simple', cookie, errno: 0 }); break;
      case C.BS: {
        const ext = disk.extents(off, len, (flags & F.REQ_ONE) !== 0);
        const want = Buffer.concat([u32(1), ...ext.flatMap(([l, f]) => [u32(l), u32(f)])]);
        ex.push({ k: 'chunk', cookie, type: CHUNK_BS, flags: DONE, check: bytesEq(want) });
        break;
      }
      default: ex.push({ k: 'simple', cookie, errno: 0 }); // FLUSH, CACHE
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The runner: one in-process server, sessions played one after another
// ---------------------------------------------------------------------------------------------

export interface FuzzCounts {
  cases: number;
  /** Sessions that reached transmission. */
  transmission_sessions: number;
  connections: number;
  /** Complete option units sent (and answered or closed on). */
  options: number;
  /** Complete requests sent (each answered exactly once, or DISC). */
  requests: number;
  /** Replies (option replies, chunks, simple replies) read and checked. */
  replies: number;
  /** Sessions the server closed for a protocol violation (and counted in protocol_errors). */
  protocol_errors: number;
  /** Sessions whose stream ended inside a unit. */
  mid_unit_disconnects: number;
  /** Socket writes the streams were cut into. */
  socket_writes: number;
  /** WRITEs above the maximum payload whose 32 MiB payload the server drained. */
  drained_giant_writes: number;
  /** Bytes read back by a clean client and compared with the model. */
  bytes_verified: number;
  /** Uncaught exceptions and unhandled rejections while the server ran. */
  crashes: number;
  /** Lines the server logged at error level (an internal error, a request that threw). */
  server_errors: number;
}

const STEP_TIMEOUT_MS = Number(process.env.ZDEDUP_FUZZ_STEP_TIMEOUT_MS ?? 5_000);

export class NbdFuzzer {
  readonly counts: FuzzCounts = {
    cases: 0, transmission_sessions: 0, connections: 0, options: 0, requests: 0, replies: 0, protocol_errors: 0,
    mid_unit_disconnects: 0, socket_writes: 0, drained_giant_writes: 0, bytes_verified: 0, crashes: 0, server_errors: 0,
  };
  readonly disks = new Map<string, DiskModel>();
  private verifiers = new Map<string, RawClient>();
  /** A session failed: the server may differ from the model, so the next one resynchronises first. */
  private unsynced = false;
  private readonly crashLines: string[] = [];
  private readonly onCrash = (e: unknown): void => { this.counts.crashes++; this.crashLines.push(`crash: ${(e as Error)?.stack ?? String(e)}`); };

  private constructor(
    readonly server: NbdServer, readonly store: PageStore, readonly path: string, private readonly dir: string,
    /** The server's error-level log lines (none may appear), and crashes caught. */
    readonly errorLines: string[],
  ) {}

  static async start(): Promise<NbdFuzzer> {
    const dir = mkdtempSync(join(tmpdir(), 'zdedup-fuzz-'));
    const path = join(dir, 'nbd.sock');
    const store = new PageStore({ pageSize: PS, codec: 'lz4' });
    const lines: string[] = [];
    // ZDEDUP_FUZZ_LOG=debug shows the server's own log on stderr (error lines are still collected).
    const debug = process.env.ZDEDUP_FUZZ_LOG === 'debug';
    const log = new Logger(debug ? 'debug' : 'error', { write: (s: string) => { if (debug) process.stderr.write(s); if (s.includes('"level":"error"')) lines.push(s); } });
    const server = new NbdServer({ store, pageSize: PS, log, exports: EXPORTS.map((e) => ({ ...e })) });
    await server.listenUnix(path);
    const f = new NbdFuzzer(server, store, path, dir, lines);
    for (const e of EXPORTS) f.disks.set(e.name, new DiskModel(e.size));
    // The read-only export holds known content, written through the store before any client.
    const ro = f.disks.get('ro')!;
    for (let p = 0; p < ro.pages; p++) ro.write(p * PS, payloadBytes({ k: p % 3 === 0 ? 'dup' : p % 3 === 1 ? 'rand' : 'word', seed: p }, PS));
    ro.zero(5 * PS, PS, true);
    ro.trim(9 * PS, 2 * PS);
    f.resync('ro');
    process.on('uncaughtException', f.onCrash);
    process.on('unhandledRejection', f.onCrash);
    for (const e of EXPORTS) {
      const c = await RawClient.connect(path);
      await c.handshake(e.name, { structured: true, meta: true });
      f.verifiers.set(e.name, c);
    }
    return f;
  }

  /** Makes the store's export equal to its model (after a failed session, and to fill 'ro'). */
  private resync(name: string): void {
    const e = this.server.exports.find((x) => x.name === name)!;
    const d = this.disks.get(name)!;
    const page = new Uint8Array(PS);
    for (let p = 0; p < d.pages; p++) {
      if (d.kind[p] === HOLE) this.store.invalidateRange(e.area, p, 1);
      else if (d.kind[p] === ZERO_PAGE) this.store.storeZeroRange(e.area, p, 1);
      else {
        page.fill(0);
        page.set(d.bytes.subarray(p * PS, Math.min((p + 1) * PS, d.size)));
        if (this.store.startStoreBatch(e.area, p, page) !== 1) throw new Error('resync: store refused a page');
      }
    }
  }

  /** Plays one session; throws with a description when the server breaks an invariant. */
  async run(s: Session): Promise<void> {
    if (this.unsynced) { for (const e of EXPORTS) if (!e.readOnly) this.resync(e.name); this.unsynced = false; }
    this.unsynced = true;
    const enc = encodeSession(s);
    const want = reference(enc.stream, this.disks);
    const before = this.server.counters.protocol_errors;
    const errorsBefore = this.errorLines.length;
    const crashesBefore = this.counts.crashes;
    const c = await RawClient.connect(this.path);
    const deadline = Date.now() + STEP_TIMEOUT_MS;
    const within = async <T>(p: Promise<T>, what: string | (() => string)): Promise<T> => {
      let t: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, rej) => {
        t = setTimeout(() => rej(new Error(`hang: no ${typeof what === 'string' ? what : what()} within ${STEP_TIMEOUT_MS} ms`)), Math.max(1, deadline - Date.now()));
      });
      try { return await Promise.race([p, timeout]); } finally { clearTimeout(t); }
    };
    try {
      const g = await within(c.read(18), 'greeting');
      if (g === null || g.readBigUInt64BE(8) !== IHAVEOPT || g.readUInt16BE(16) !== 3) throw new Error('bad greeting');
      // Send the stream in pieces, letting the server read between them. When the server is to
      // close on a unit, only a few bytes after that unit go out, and only when everything fits in
      // the socket buffer at once: a client write still pending when the server closes fails with
      // EPIPE, and Node then destroys the client socket before it has read the replies already sent
      // (a client artifact, not a server fault).
      const sendEnd = want.closed ? Math.min(enc.stream.length, want.closeAt + (want.closeAt <= 48 * 1024 ? 512 : 0)) : enc.stream.length;
      const stream = enc.stream.subarray(0, sendEnd);
      const cuts = [...new Set(s.cuts.map((x) => Math.floor(x * stream.length)))].filter((x) => x > 0).sort((a, b) => a - b);
      let at = 0;
      for (const cut of [...cuts, stream.length]) {
        if (want.closed && at >= want.closeAt) break; // the server has closed (or is closing): EPIPE
        if (cut > at) { c.write(stream.subarray(at, cut)); this.counts.socket_writes++; }
        at = cut;
        if (cut < stream.length) await new Promise((r) => setImmediate(() => setImmediate(r)));
      }
      // Every expected reply, in order.
      let n = 0;
      for (const x of want.expects) {
        const why = await within(this.expect(c, x), () => `reply ${n} (${describe(x)})`);
        if (why !== null) throw new Error(`reply ${n}: ${why}`);
        n++;
      }
      this.counts.replies += n;
      if (want.closed) {
        const extra = await within(c.read(1), 'close');
        if (extra !== null) throw new Error(`the server should have closed; it sent 0x${extra.toString('hex')} more`);
      } else if (s.tail === 'end') {
        c.end();
        const extra = await within(c.read(1), 'close after the client half-closed');
        if (extra !== null) throw new Error(`unexpected bytes after the last reply: 0x${extra.toString('hex')}`);
      } else {
        // Nothing more may come: give the server a moment to send something it should not.
        await new Promise((r) => setImmediate(r));
        const extra = (c as unknown as { have: number }).have;
        if (extra !== 0) throw new Error(`${extra} unexpected bytes after the last reply`);
      }
    } finally {
      c.destroy();
    }
    const pe = this.server.counters.protocol_errors - before;
    if (pe !== (want.protocolError ? 1 : 0)) throw new Error(`protocol_errors went up by ${pe}, expected ${want.protocolError ? 1 : 0}`);
    if (this.errorLines.length !== errorsBefore) throw new Error(`server logged an error: ${this.errorLines.slice(errorsBefore).join('\n')}`);
    if (this.counts.crashes !== crashesBefore) throw new Error(this.crashLines.at(-1));
    // Data integrity: a clean client reads back what the session changed.
    if (want.disk !== null && want.entered !== null) {
      this.disks.set(want.entered, want.disk);
      if (want.dirty !== null) await within(this.verify(want.entered, want.dirty[0], want.dirty[1]), 'read-back');
    }
    this.unsynced = false;
    const k = this.counts;
    k.cases++;
    k.connections++;
    if (want.entered !== null) k.transmission_sessions++;
    k.options += want.options;
    k.requests += want.requests;
    if (want.protocolError) k.protocol_errors++;
    if (want.midUnit) k.mid_unit_disconnects++;
    k.drained_giant_writes += enc.giants;
  }

  /** Reads one expected reply; returns why it is wrong, or null. */
  private async expect(c: RawClient, x: Expect): Promise<string | null> {
    switch (x.k) {
      case 'opt': {
        const h = await c.read(20);
        if (h === null) return `closed; expected option reply 0x${x.type.toString(16)} to option ${x.opt}`;
        if (h.readBigUInt64BE(0) !== OPT_REPLY_MAGIC) return `option reply magic 0x${h.toString('hex', 0, 8)}`;
        const opt = h.readUInt32BE(8), type = h.readUInt32BE(12), len = h.readUInt32BE(16);
        if (opt !== x.opt || type !== x.type) return `option reply (opt ${opt}, type 0x${type.toString(16)}), expected (opt ${x.opt}, type 0x${x.type.toString(16)})`;
        if (len > MAX_OPTION_DATA) return `option reply length ${len}`;
        const d = await c.read(len);
        if (d === null) return 'closed inside an option reply';
        return x.check?.(d) ?? null;
      }
      case 'enter': {
        const d = await c.read(10 + (x.zeroes ? 124 : 0));
        if (d === null) return 'closed; expected the EXPORT_NAME reply';
        if (d.readBigUInt64BE(0) !== BigInt(x.size) || d.readUInt16BE(8) !== x.flags) return `EXPORT_NAME reply ${d.toString('hex', 0, 10)}, expected size ${x.size} flags 0x${x.flags.toString(16)}`;
        if (x.zeroes && d.subarray(10).some((b) => b !== 0)) return 'EXPORT_NAME padding is not zeroes';
        return null;
      }
      case 'simple': {
        const h = await c.read(16);
        if (h === null) return `closed; expected a simple reply to cookie ${x.cookie}`;
        if (h.readUInt32BE(0) !== SIMPLE_MAGIC) return `magic 0x${h.readUInt32BE(0).toString(16)}, expected a simple reply (errno ${x.errno}) to cookie ${x.cookie}`;
        const errno = h.readUInt32BE(4), cookie = h.readBigUInt64BE(8);
        if (cookie !== x.cookie) return `cookie ${cookie}, expected ${x.cookie}`;
        if (errno !== x.errno) return `errno ${errno}, expected ${x.errno} (cookie ${x.cookie})`;
        if (x.data !== undefined && x.data.length > 0) {
          const d = await c.read(x.data.length);
          if (d === null) return 'closed inside READ data';
          if (Buffer.compare(d, x.data) !== 0) return `READ data differs from the model (cookie ${x.cookie}, ${firstDiff(d, x.data)})`;
        }
        return null;
      }
      case 'chunk': {
        const h = await c.read(20);
        if (h === null) return `closed; expected a structured chunk to cookie ${x.cookie}`;
        if (h.readUInt32BE(0) !== STRUCTURED_MAGIC) return `magic 0x${h.readUInt32BE(0).toString(16)}, expected a chunk of type 0x${x.type.toString(16)} to cookie ${x.cookie}`;
        const flags = h.readUInt16BE(4), type = h.readUInt16BE(6), cookie = h.readBigUInt64BE(8), len = h.readUInt32BE(16);
        if (cookie !== x.cookie) return `chunk cookie ${cookie}, expected ${x.cookie}`;
        if (type !== x.type || flags !== x.flags) return `chunk (type 0x${type.toString(16)}, flags ${flags}), expected (0x${x.type.toString(16)}, ${x.flags})`;
        if (len > MAX_PAYLOAD + 8) return `chunk length ${len}`;
        const d = await c.read(len);
        if (d === null) return 'closed inside a chunk';
        return x.check(d);
      }
    }
  }

  /** Reads [from, to) of an export through its verifier connection (simple READs) and compares. */
  async verify(name: string, from: number, to: number): Promise<void> {
    const c = this.verifiers.get(name)!;
    const d = this.disks.get(name)!;
    const step = 256 * 1024;
    for (let off = from; off < to; off += step) {
      const n = Math.min(step, to - off);
      c.request(C.READ, 0, 7n, BigInt(off), n);
      const ch = await c.chunk();
      if (ch === null || ch.type !== CHUNK_DATA || ch.cookie !== 7n) throw new Error(`read-back of "${name}" [${off}, ${off + n}) failed: ${JSON.stringify(ch?.type)}`);
      const got = ch.payload.subarray(8);
      const exp = d.bytes.subarray(off, off + n);
      if (Buffer.compare(got, exp) !== 0) throw new Error(`data integrity: "${name}" [${off}, ${off + n}) differs from the model (${firstDiff(got, exp, off)})`);
      this.counts.bytes_verified += n;
    }
  }

  /** Every export read back whole, and its BLOCK_STATUS compared page by page with the model. */
  async verifyAll(): Promise<void> {
    for (const e of EXPORTS) {
      await this.verify(e.name, 0, e.size);
      const c = this.verifiers.get(e.name)!;
      c.request(C.BS, 0, 8n, 0n, e.size);
      const ch = await c.chunk();
      const want = Buffer.concat([u32(1), ...this.disks.get(e.name)!.extents(0, e.size, false).flatMap(([l, f]) => [u32(l), u32(f)])]);
      if (ch === null || Buffer.compare(ch.payload, want) !== 0) throw new Error(`BLOCK_STATUS of "${e.name}" differs from the model`);
    }
  }

  /** Stops the server; throws if a connection other than the verifiers was left open. */
  async stop(): Promise<void> {
    try {
      const until = Date.now() + 5000;
      while (this.server.connectionCount > this.verifiers.size && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
      const left = this.server.connectionCount - this.verifiers.size;
      for (const c of this.verifiers.values()) c.destroy();
      if (left !== 0) throw new Error(`${left} fuzz connection(s) still open on the server`);
    } finally {
      process.off('uncaughtException', this.onCrash);
      process.off('unhandledRejection', this.onCrash);
      await this.server.close(1000);
      rmSync(this.dir, { recursive: true, force: true });
    }
  }
}

/** An expected reply, for a failure message (data abbreviated). */
function describe(x: Expect): string {
  return JSON.stringify(x, (k, v: unknown) => (typeof v === 'bigint' ? v.toString() : k === 'data' ? `<${(v as Buffer).length} bytes>` : v));
}

function firstDiff(a: Uint8Array, b: Uint8Array, base = 0): string {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return `first difference at byte ${base + i}: got ${a[i]}, model ${b[i]}`;
  return `lengths ${a.length} and ${b.length}`;
}

/** Runs `cases` sessions under fast-check (shrinking a failure to a small session) and returns the counts. */
export async function runNbdFuzz(o: { cases: number; seed?: number; onProgress?: (k: FuzzCounts) => void }): Promise<{ counts: FuzzCounts; seed: number; failure: string | null }> {
  const seed = o.seed ?? (Date.now() ^ (Math.random() * 0x7fffffff)) | 0;
  process.stderr.write(`nbd fuzz: ${o.cases} sessions, seed ${seed}\n`);
  const f = await NbdFuzzer.start();
  let failure: string | null = null;
  try {
    const r = await fc.check(fc.asyncProperty(sessionArb(), async (s) => {
      await f.run(s);
      if (o.onProgress && f.counts.cases % 5000 === 0) o.onProgress(f.counts);
    }), { numRuns: o.cases, seed, endOnFailure: false, verbose: 0 });
    f.counts.server_errors = f.errorLines.length;
    if (r.failed) {
      const cause = r.errorInstance instanceof Error ? r.errorInstance.message : String(r.errorInstance);
      failure = `${cause}\n${fc.defaultReportMessage(r) ?? ''}`;
    } else {
      await f.verifyAll();
    }
  } finally {
    await f.stop();
  }
  return { counts: f.counts, seed, failure };
}
