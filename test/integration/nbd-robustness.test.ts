/**
 * Robustness: ≥ 10,000 randomized malformed handshakes and requests from raw sockets against one
 * live `zdedup serve`, then proof that nothing stored was altered and the server still serves.
 *
 * Exports: "data" (8 MiB, filled with known content before the storm; the storm sends it only
 * requests that must be refused), and "" (16 MiB scratch, where anything goes).
 *
 * Each case checks the reply the protocol prescribes where one is prescribed (ERR_UNSUP for an
 * unknown option, EINVAL for an unknown command, a disconnect for a bad magic, a stream still in
 * step after an invalid WRITE's payload, ...); cases that only throw garbage check that the server
 * closes or answers, never hangs on a completed exchange. Cases are generated from a seeded PRNG,
 * so a failure names a reproducible case number.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { httpGet, startServer } from './nbd/harness.js';
import { RawClient, u16, u32 } from './nbd/raw-client.js';

const CASES = Number(process.env.ZDEDUP_FUZZ_CASES ?? 10_000);
const PARALLEL = 16;
const DATA_SIZE = 8 * 1024 * 1024;
const MiB = 1024 * 1024;

/** xorshift32: reproducible cases. */
function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x;
  };
}

function knownContent(): Buffer {
  const b = Buffer.alloc(DATA_SIZE);
  for (let p = 0; p < DATA_SIZE / 4096; p++) {
    const page = b.subarray(p * 4096, (p + 1) * 4096);
    switch (p % 4) {
      case 0: break; // zero page
      case 1: page.fill(p & 0xff); break;
      case 2: page.write(`page ${p % 16} `.repeat(512), 'latin1'); break; // duplicates every 64 pages
      default: for (let i = 0; i < 4096; i++) page[i] = (p * 31 + i * 7) & 0xff;
    }
  }
  return b;
}

async function writeAll(path: string, content: Buffer): Promise<void> {
  const c = await RawClient.connect(path);
  await c.handshake('data');
  const chunk = 1 * MiB + 1; // odd-sized writes: the last pages of each are read-modify-write
  let cookie = 1n;
  for (let off = 0; off < content.length; off += chunk) {
    const part = content.subarray(off, Math.min(off + chunk, content.length));
    c.request(1, 0, cookie, BigInt(off), part.length, part);
    const r = await c.simpleReply();
    assert.equal(r?.error, 0);
    assert.equal(r?.cookie, cookie++);
  }
  c.request(2, 0, 0n, 0n, 0);
  c.end();
}

async function readAll(path: string, exportName: string, size: number): Promise<Buffer> {
  const c = await RawClient.connect(path);
  await c.handshake(exportName);
  const out = Buffer.alloc(size);
  const step = 4 * MiB;
  for (let off = 0; off < size; off += step) {
    const n = Math.min(step, size - off);
    c.request(0, 0, 77n, BigInt(off), n);
    const r = await c.simpleReply(n);
    assert.equal(r?.error, 0);
    r!.data.copy(out, off);
  }
  c.request(2, 0, 0n, 0n, 0);
  c.end();
  return out;
}

type Case = (path: string, rnd: () => number) => Promise<string>;

const rb = (rnd: () => number, n: number): Buffer => {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = rnd() & 0xff;
  return b;
};

/** Handshake-phase cases. Each returns a label for the tally. */
const handshakeCases: Case[] = [
  async function badClientFlags(path, rnd) {
    const c = await RawClient.connect(path);
    await c.greeting();
    c.write(u32((rnd() | 4) >>> 0)); // some bit beyond FIXED_NEWSTYLE|NO_ZEROES
    await c.closedByServer();
    return 'bad client flags → disconnect';
  },
  async function truncatedFlags(path, rnd) {
    const c = await RawClient.connect(path);
    await c.greeting();
    c.write(rb(rnd, rnd() % 4));
    c.end();
    await c.closedByServer();
    return 'truncated client flags';
  },
  async function badOptionMagic(path, rnd) {
    const c = await RawClient.connect(path);
    await c.greeting();
    c.write(u32(3));
    const h = rb(rnd, 16);
    h.writeUInt32BE(0x49484156 ^ (1 + (rnd() % 0xffff)), 0);
    c.write(h);
    await c.closedByServer();
    return 'bad option magic → disconnect';
  },
  async function unknownOption(path, rnd) {
    const c = await RawClient.connect(path);
    await c.greeting();
    c.write(u32(3));
    const known = new Set([1, 2, 3, 6, 7, 8, 9, 10]);
    let opt = rnd() >>> 0;
    while (known.has(opt)) opt = rnd() >>> 0;
    c.sendOption(opt, rb(rnd, rnd() % 300));
    const r = await c.optionReply();
    assert.equal(r?.type, 0x80000001, `unknown option ${opt}: ERR_UNSUP`);
    assert.equal(r?.opt, opt);
    c.sendOption(2); // ABORT
    const a = await c.optionReply();
    assert.equal(a?.type, 1, 'ABORT answered with ACK');
    await c.closedByServer();
    return 'unknown option → ERR_UNSUP, then ABORT';
  },
  async function oversizedOption(path, rnd) {
    const c = await RawClient.connect(path);
    await c.greeting();
    c.write(u32(3));
    const len = 65537 + (rnd() % 0x7fff0000);
    c.sendOption([7, 6, 9, 10, 3, 12345][rnd() % 6]!, rb(rnd, rnd() % 2000), len);
    c.destroy(); // vanish before sending the rest
    return 'oversized option length, client vanishes';
  },
  async function tooBigAnswered(path, rnd) {
    const c = await RawClient.connect(path);
    await c.greeting();
    c.write(u32(3));
    const len = 65537 + (rnd() % 5000);
    c.sendOption(6, rb(rnd, len));
    const r = await c.optionReply();
    assert.equal(r?.type, 0x80000009, 'option longer than we buffer: skipped, ERR_TOO_BIG');
    c.sendOption(3); // LIST still works: the stream is in step
    let n = 0;
    for (;;) {
      const x = await c.optionReply();
      assert.ok(x !== null);
      if (x.type === 1) break;
      assert.equal(x.type, 2);
      n++;
    }
    assert.equal(n, 2, 'LIST lists both exports');
    c.destroy();
    return 'oversized option fully sent → ERR_TOO_BIG, stream in step';
  },
  async function malformedInfoGo(path, rnd) {
    const c = await RawClient.connect(path);
    await c.greeting();
    c.write(u32(3));
    const name = Buffer.from(['data', '', 'nope', 'x'.repeat(rnd() % 100)][rnd() % 4]!);
    const variant = rnd() % 4;
    let data: Buffer;
    if (variant === 0) data = Buffer.concat([u32(name.length + 1 + (rnd() % 1000)), name, u16(0)]); // name length too long
    else if (variant === 1) data = Buffer.concat([u32(name.length), name, u16(3), u16(1)]);        // fewer info ids than said
    else if (variant === 2) data = rb(rnd, rnd() % 6);                                              // too short
    else data = Buffer.concat([u32(name.length), name, u16(0), rb(rnd, 1 + (rnd() % 10))]);        // trailing bytes
    c.sendOption(rnd() % 2 ? 6 : 7, data);
    const r = await c.optionReply();
    assert.equal(r?.type, 0x80000003, `malformed INFO/GO variant ${variant}: ERR_INVALID`);
    c.sendOption(7, Buffer.concat([u32(4), Buffer.from('nope'), u16(0)]));
    const u = await c.optionReply();
    assert.equal(u?.type, 0x80000006, 'GO of an unknown export: ERR_UNKNOWN');
    c.destroy();
    return 'malformed INFO/GO → ERR_INVALID; unknown export → ERR_UNKNOWN';
  },
  async function listWithData(path, rnd) {
    const c = await RawClient.connect(path);
    await c.greeting();
    c.write(u32(3));
    c.sendOption(3, rb(rnd, 1 + (rnd() % 50)));
    assert.equal((await c.optionReply())?.type, 0x80000003, 'LIST with data: ERR_INVALID');
    c.sendOption(8, rb(rnd, 1 + (rnd() % 50)));
    assert.equal((await c.optionReply())?.type, 0x80000003, 'STRUCTURED_REPLY with data: ERR_INVALID');
    c.destroy();
    return 'LIST / STRUCTURED_REPLY with data → ERR_INVALID';
  },
  async function metaContextGarbage(path, rnd) {
    const c = await RawClient.connect(path);
    await c.greeting();
    c.write(u32(3));
    const sr = rnd() % 2 === 0;
    if (sr) {
      c.sendOption(8);
      assert.equal((await c.optionReply())?.type, 1);
    }
    c.sendOption(9 + (rnd() % 2), Buffer.concat([u32(4), Buffer.from('data'), u32(1 + (rnd() % 1000)), rb(rnd, rnd() % 40)]));
    assert.equal((await c.optionReply())?.type, 0x80000003, `garbled meta context query (sr=${sr}): ERR_INVALID`);
    c.destroy();
    return 'garbled meta context → ERR_INVALID';
  },
  async function unknownExportName(path, rnd) {
    const c = await RawClient.connect(path);
    await c.greeting();
    c.write(u32(3));
    c.sendOption(1, Buffer.from(`missing-${rnd()}`));
    await c.closedByServer();
    return 'EXPORT_NAME unknown → disconnect';
  },
  async function garbageAfterGreeting(path, rnd) {
    const c = await RawClient.connect(path);
    await c.greeting();
    c.write(rb(rnd, 1 + (rnd() % 200)));
    c.end();
    await c.closedByServer();
    return 'random bytes in the option phase';
  },
  async function vanishInOption(path, rnd) {
    const c = await RawClient.connect(path);
    await c.greeting();
    c.write(u32(3));
    const d = Buffer.concat([u32(4), Buffer.from('data'), u16(0)]);
    const full = Buffer.alloc(16 + d.length);
    full.writeBigUInt64BE(0x49484156454f5054n, 0);
    full.writeUInt32BE(7, 8);
    full.writeUInt32BE(d.length, 12);
    d.copy(full, 16);
    c.write(full.subarray(0, rnd() % full.length));
    c.destroy();
    return 'client vanishes mid-option';
  },
];

/** Transmission-phase cases on the scratch export "" (anything goes) or on "data" (must refuse). */
const requestCases: Case[] = [
  async function badRequestMagic(path, rnd) {
    const c = await RawClient.connect(path);
    await c.handshake('');
    const h = rb(rnd, 28);
    if (h.readUInt32BE(0) === 0x25609513) h[0]! ^= 1;
    c.write(h);
    await c.closedByServer();
    return 'bad request magic → disconnect';
  },
  async function unknownCommand(path, rnd) {
    const c = await RawClient.connect(path);
    const sr = rnd() % 2 === 0;
    await c.handshake('data', { structured: sr });
    const type = 8 + (rnd() % 0xfff8);
    const cookie = BigInt(rnd()) << 32n | BigInt(rnd());
    c.request(type, 0, cookie, BigInt(rnd() % DATA_SIZE), rnd() % 100000);
    const r = await c.simpleReply();
    assert.equal(r?.error, 22, `unknown command ${type}: EINVAL`);
    assert.equal(r?.cookie, cookie, 'cookie echoed');
    c.request(0, 0, 5n, 4096n, 8);
    const ok = sr ? await c.chunk() : await c.simpleReply(8);
    assert.ok(ok !== null && ('error' in ok ? ok.error === 0 : ok.type === 1), 'next request served');
    c.destroy();
    return 'unknown command → EINVAL, connection goes on';
  },
  async function badFlags(path, rnd) {
    const c = await RawClient.connect(path);
    await c.handshake('data');
    const type = [0, 1, 3, 4, 5, 6][rnd() % 6]!;
    // Flags each command accepts on a connection without structured replies (DF needs them).
    const allowed = type === 6 ? 0x13 : 0x1;
    const bad = [...Array(16).keys()].filter((b) => ((allowed >> b) & 1) === 0);
    const flags = ((rnd() & 0xffff) | (1 << bad[rnd() % bad.length]!)) & 0xffff;
    const payload = type === 1 ? rb(rnd, rnd() % 3000) : undefined;
    c.request(type, flags, 9n, BigInt(rnd() % 1000), payload?.length ?? 10, payload);
    const r = await c.simpleReply();
    assert.equal(r?.error, 22, `command ${type} flags 0x${flags.toString(16)}: EINVAL`);
    c.request(3, 0, 10n, 0n, 0); // FLUSH: the stream is still in step after the drained payload
    assert.deepEqual(await c.simpleReply(), { error: 0, cookie: 10n, data: Buffer.alloc(0) });
    c.destroy();
    return 'bad flags → EINVAL, invalid WRITE payload drained';
  },
  async function outOfRange(path, rnd) {
    const c = await RawClient.connect(path);
    const sr = rnd() % 2 === 0;
    await c.handshake('data', { structured: sr, meta: sr });
    const type = sr ? [0, 1, 4, 5, 6, 7][rnd() % 6]! : [0, 1, 4, 5, 6][rnd() % 5]!;
    const offs = [BigInt(DATA_SIZE), BigInt(DATA_SIZE - 1), 0xffffffffffffffffn, 1n << 53n, (1n << 63n) + BigInt(rnd())];
    const off = offs[rnd() % offs.length]!;
    const len = 2 + (rnd() % 5000);
    const payload = type === 1 ? rb(rnd, len) : undefined;
    c.request(type, 0, 11n, off, len, payload);
    const want = type === 1 || type === 6 ? 28 : 22;
    if (sr && (type === 0 || type === 7)) {
      const ch = await c.chunk();
      assert.equal(ch?.type, 0x8001, 'structured error chunk');
      assert.equal(ch?.payload.readUInt32BE(0), want);
      assert.equal(ch?.flags, 1, 'DONE');
    } else {
      assert.equal((await c.simpleReply())?.error, want, `command ${type} at ${off}: errno ${want}`);
    }
    c.destroy();
    return 'past EOF → EINVAL / ENOSPC';
  },
  async function oversizedPayload(path, rnd) {
    const c = await RawClient.connect(path);
    await c.handshake('data');
    const type = rnd() % 2; // READ or WRITE
    const len = 32 * MiB + 1 + (rnd() % 0x7fffffff);
    c.request(type, 0, 12n, 0n, len, type === 1 ? rb(rnd, rnd() % 10000) : undefined);
    if (type === 0) {
      assert.equal((await c.simpleReply())?.error, 22, 'READ larger than the maximum payload: EINVAL');
    }
    c.destroy(); // a WRITE's payload is being drained: vanish mid-payload
    return 'length over 32 MiB → EINVAL (WRITE drained until the client vanishes)';
  },
  async function oversizedWriteDrained(path, rnd) {
    const c = await RawClient.connect(path);
    await c.handshake('data');
    const len = 32 * MiB + 1 + (rnd() % 4096);
    c.request(1, 0, 13n, 0n, len, Buffer.alloc(len, 0xee));
    assert.equal((await c.simpleReply())?.error, 22, 'WRITE over the maximum payload: EINVAL after draining it');
    c.request(0, 0, 14n, 0n, 4);
    const r = await c.simpleReply(4);
    assert.equal(r?.cookie, 14n, 'stream in step after 32 MiB drained');
    assert.notDeepEqual(r?.data, Buffer.alloc(4, 0xee));
    c.destroy();
    return 'WRITE over 32 MiB fully sent → drained, EINVAL, in step';
  },
  async function blockStatusWithoutContext(path, rnd) {
    const c = await RawClient.connect(path);
    const sr = rnd() % 2 === 0;
    await c.handshake('data', { structured: sr });
    c.request(7, 0, 15n, 0n, 4096);
    if (sr) {
      const ch = await c.chunk();
      assert.equal(ch?.payload.readUInt32BE(0), 22);
    } else {
      assert.equal((await c.simpleReply())?.error, 22);
    }
    c.destroy();
    return 'BLOCK_STATUS without a meta context → EINVAL';
  },
  async function vanishMidRequest(path, rnd) {
    const c = await RawClient.connect(path);
    await c.handshake('');
    const len = 1 + (rnd() % 200000);
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(1, 6);
    h.writeBigUInt64BE(BigInt(rnd() % (8 * MiB)), 16);
    h.writeUInt32BE(len, 24);
    const whole = Buffer.concat([h, rb(rnd, Math.min(len, 5000))]);
    c.write(whole.subarray(0, rnd() % whole.length));
    c.destroy();
    return 'client vanishes mid-request';
  },
  async function randomValidOnScratch(path, rnd) {
    // Real traffic on the scratch export, pipelined, then garbage or a vanishing client.
    const c = await RawClient.connect(path);
    await c.handshake('');
    const n = 1 + (rnd() % 20);
    const reads: number[] = [];
    for (let i = 0; i < n; i++) {
      const type = [0, 1, 3, 4, 5, 6][rnd() % 6]!;
      const off = rnd() % (16 * MiB - 70000);
      const len = type === 3 ? 0 : 1 + (rnd() % 70000);
      reads.push(type === 0 ? len : 0);
      c.request(type, 0, BigInt(i), type === 3 ? 0n : BigInt(off), len, type === 1 ? rb(rnd, len) : undefined);
    }
    for (let i = 0; i < n; i++) {
      const r = await c.simpleReply(reads[i]!);
      assert.ok(r !== null, 'every pipelined request answered');
      assert.equal(r.error, 0, 'valid request succeeded');
      assert.equal(r.cookie, BigInt(i), 'replies carry their cookies');
    }
    if (rnd() % 2) c.write(rb(rnd, 1 + (rnd() % 100)));
    c.destroy();
    return 'pipelined traffic on the scratch export';
  },
];

test(`robustness: ${CASES} malformed handshakes and requests leave the server serving and the data intact`, { timeout: 600_000 }, async () => {
  const s = await startServer(['--export', 'data:8M', '--export', ':16M']);
  try {
    const content = knownContent();
    await writeAll(s.socket, content);
    assert.ok((await readAll(s.socket, 'data', DATA_SIZE)).equals(content), 'known content written');

    const tally = new Map<string, number>();
    // ZDEDUP_FUZZ_ONLY=<case function name> narrows the storm to one kind of case (debugging).
    const only = process.env.ZDEDUP_FUZZ_ONLY;
    const all = [...handshakeCases, ...requestCases].filter((f) => only === undefined || f.name === only);
    let next = 0;
    const worker = async (): Promise<void> => {
      for (;;) {
        const i = next++;
        if (i >= CASES) return;
        const rnd = prng(0x9e3779b9 ^ i);
        const fn = all[i % all.length]!;
        try {
          const label = await fn(s.socket, rnd);
          tally.set(label, (tally.get(label) ?? 0) + 1);
        } catch (e) {
          throw new Error(`case ${i} (${fn.name}) failed: ${(e as Error).message}`, { cause: e });
        }
      }
    };
    await Promise.all(Array.from({ length: PARALLEL }, worker));
    const total = [...tally.values()].reduce((a, b) => a + b, 0);
    assert.ok(total >= CASES - Math.ceil(CASES / all.length), `ran ${total} cases`);

    // The server still serves, and the verified export is byte-identical.
    assert.ok((await readAll(s.socket, 'data', DATA_SIZE)).equals(content), '"data" export altered by the storm');
    const c = await RawClient.connect(s.socket);
    await c.handshake('', { structured: true, meta: true });
    c.request(7, 0, 1n, 0n, 4096);
    assert.equal((await c.chunk())?.type, 5, 'block status still answered');
    c.destroy();

    // Every connection was closed (none leaked), and the server counted and logged what happened.
    let st = JSON.parse(await httpGet(s.http!, '/stats')) as { nbd: Record<string, number> };
    for (let i = 0; i < 200 && st.nbd.connections_active! > 0; i++) {
      await new Promise((r) => setImmediate(r));
      st = JSON.parse(await httpGet(s.http!, '/stats')) as { nbd: Record<string, number> };
    }
    assert.equal(st.nbd.connections_active, 0, 'no connection left open');
    assert.ok(st.nbd.connections_accepted! >= CASES, 'every case connected');
    if (only === undefined) {
      assert.ok(st.nbd.protocol_errors! > CASES / 20, 'protocol errors counted');
      assert.ok(st.nbd.disconnect_mid_request! > CASES / 100, 'vanished clients counted');
      assert.ok(st.nbd.options_refused! > CASES / 10, 'refused options counted');
      assert.ok(s.logs.filter((l) => l.level === 'warn').length > CASES / 10, 'bad input is logged');
    }
    const metrics = await httpGet(s.http!, '/metrics');
    const rss = Number(/^zdedup_process_resident_memory_bytes (\d+)/m.exec(metrics)?.[1]);
    assert.ok(rss > 0 && rss < 1024 * MiB, `server RSS stays bounded (${rss} bytes) after clients claimed up to 4 GiB lengths`);
  } finally {
    const r = await s.stop();
    assert.equal(r.code, 0, 'clean exit after the storm');
  }
});
