/**
 * Bench corpora, built by the bench itself (deterministic, seeded; nothing committed):
 *   zero-heavy      75% zero pages, 25% unique JSON-like text
 *   duplicate-heavy every page drawn from 2048 distinct pages (text, binary-ish, same-filled)
 *   text            unique JSON records and log lines, no page repeats
 *   random          incompressible, unique
 *   process-image   resident anonymous pages of real processes the bench starts (see process-image.ts)
 * Files go to $ZDEDUP_CORPORA or os.tmpdir()/zdedup-corpora and are reused when present.
 */
import { closeSync, existsSync, mkdirSync, openSync, statSync, writeSync, renameSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const PAGE = 4096;

export function corporaDir(): string {
  const d = process.env.ZDEDUP_CORPORA ?? join(tmpdir(), 'zdedup-corpora');
  mkdirSync(d, { recursive: true });
  return d;
}

/** xorshift32 */
export class Rng {
  constructor(private x: number) { if (this.x === 0) this.x = 0x9e3779b9; }
  next(): number { let x = this.x; x ^= x << 13; x ^= x >>> 17; x ^= x << 5; this.x = x; return x >>> 0; }
  below(n: number): number { return this.next() % n; }
  fill(buf: Uint8Array, from = 0, to = buf.length): void {
    for (let i = from; i < to; i += 4) { const v = this.next(); buf[i] = v; buf[i + 1] = v >>> 8; buf[i + 2] = v >>> 16; buf[i + 3] = v >>> 24; }
  }
}

const WORDS = ('the of and to in is for on that by this with you it not or be are from at as your all have new more an was ' +
  'we will home can us about if page my has search free but our one other do no information time they site he up may what ' +
  'which their news out use any there see only so his when contact here business who web also now help get pm view online ' +
  'user id name email status active pending error warning info request response latency bytes count total').split(' ');

/** Fills a page with JSON records / log lines (compresses ~3-5x with lz4, like heap text). */
export function textPage(rng: Rng, page: Buffer): void {
  let s = '';
  while (s.length < PAGE) {
    const r = rng.below(3);
    if (r === 0) {
      s += JSON.stringify({ id: rng.next(), user: WORDS[rng.below(WORDS.length)] + rng.below(1000), active: rng.below(2) === 1,
        score: rng.below(100000) / 100, tags: [WORDS[rng.below(WORDS.length)], WORDS[rng.below(WORDS.length)]] }) + '\n';
    } else if (r === 1) {
      s += `2026-11-${10 + rng.below(20)}T${rng.below(24)}:${rng.below(60)}:${rng.below(60)}Z INFO request ${WORDS[rng.below(WORDS.length)]} id=${rng.next().toString(16)} latency=${rng.below(900)}ms\n`;
    } else {
      let line = '';
      for (let i = 0; i < 12; i++) line += WORDS[rng.below(WORDS.length)] + ' ';
      s += line + '\n';
    }
  }
  page.write(s.slice(0, PAGE), 0, 'latin1');
}

/** A binary-ish page: small integers and pointers, like a heap of structs (compresses ~2x). */
export function structPage(rng: Rng, page: Buffer): void {
  const base = 0x7f0000000000 + rng.below(1 << 20) * 4096;
  for (let i = 0; i < PAGE; i += 16) {
    page.writeUInt32LE(rng.below(256), i);
    page.writeUInt32LE(rng.below(4), i + 4);
    const p = base + rng.below(65536) * 16;
    page.writeUInt32LE(p >>> 0, i + 8);
    page.writeUInt32LE(Math.floor(p / 2 ** 32), i + 12);
  }
}

type Gen = (rng: Rng, i: number, page: Buffer) => void;

export const GENERATORS: Record<string, Gen> = {
  'zero-heavy': (rng, _i, page) => { if (rng.below(4) === 0) textPage(rng, page); else page.fill(0); },
  'duplicate-heavy': (() => {
    const pool: Buffer[] = [];
    const prng = new Rng(77);
    for (let k = 0; k < 2048; k++) {
      const p = Buffer.alloc(PAGE);
      const t = k % 8;
      if (t < 4) textPage(prng, p); else if (t < 7) structPage(prng, p); else p.fill(k & 0xff);
      pool.push(p);
    }
    return (rng: Rng, _i: number, page: Buffer) => { pool[rng.below(pool.length)]!.copy(page); };
  })(),
  text: (rng, _i, page) => textPage(rng, page),
  random: (rng, _i, page) => rng.fill(page),
};

/** Builds (or reuses) the corpus file `name` of `pages` pages; returns its path. */
export function buildCorpus(name: string, pages: number): string {
  const gen = GENERATORS[name];
  if (!gen) throw new Error(`unknown corpus ${name}`);
  const path = join(corporaDir(), `${name}-${pages}.pages`);
  if (existsSync(path) && statSync(path).size === pages * PAGE) return path;
  const tmp = path + '.tmp';
  const fd = openSync(tmp, 'w');
  const rng = new Rng(12345 + name.length);
  const chunk = Buffer.alloc(256 * PAGE);
  try {
    for (let i = 0; i < pages; i += 256) {
      const n = Math.min(256, pages - i);
      chunk.fill(0);
      for (let j = 0; j < n; j++) gen(rng, i + j, chunk.subarray(j * PAGE, (j + 1) * PAGE));
      writeSync(fd, chunk, 0, n * PAGE);
    }
  } finally { closeSync(fd); }
  renameSync(tmp, path);
  return path;
}

/**
 * Per page: 35% JSON/log text, 30% struct-like binary, 15% incompressible, 10% a copy of one of
 * the last 4096 pages (dedup), 5% same-filled (nonzero word), 5% zero. Seeded; reused when present.
 */
export function buildMixedCorpus(pages: number): string {
  const path = join(corporaDir(), `tier-mix-${pages}.pages`);
  if (existsSync(path) && statSync(path).size === pages * PAGE) return path;
  const tmp = path + '.tmp';
  const fd = openSync(tmp, 'w');
  const rng = new Rng(20261122);
  const recent: Buffer[] = [];
  const chunk = Buffer.alloc(256 * PAGE);
  try {
    for (let i = 0; i < pages; i += 256) {
      const n = Math.min(256, pages - i);
      chunk.fill(0);
      for (let j = 0; j < n; j++) {
        const page = chunk.subarray(j * PAGE, (j + 1) * PAGE);
        const r = rng.below(100);
        if (r < 35) textPage(rng, page);
        else if (r < 65) structPage(rng, page);
        else if (r < 80) rng.fill(page);
        else if (r < 90 && recent.length > 0) recent[rng.below(recent.length)]!.copy(page);
        else if (r < 95) fillWord(page, rng.next());
        else continue; // zero
        if (r < 80) {
          if (recent.length < 4096) recent.push(Buffer.from(page));
          else page.copy(recent[rng.below(4096)]!);
        }
      }
      writeSync(fd, chunk, 0, n * PAGE);
    }
  } finally { closeSync(fd); }
  renameSync(tmp, path);
  return path;
}

/** A same-filled page: one nonzero 8-byte word repeated. */
function fillWord(page: Buffer, w: number): void {
  page.writeUInt32LE((w | 1) >>> 0, 0);
  page.writeUInt32LE(w >>> 3, 4);
  for (let o = 8; o < PAGE; o += 8) page.copy(page, o, 0, 8);
}
