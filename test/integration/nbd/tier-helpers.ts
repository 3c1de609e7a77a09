/**
 * Helpers shared by the disk-tier integration tests (tier-clients, tier-faults, tier-memory):
 * deterministic page data that compresses partly and deduplicates partly, /stats of a running
 * server, the tier_io.py nbdsh driver, RSS and page-cache probes.
 */
import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { REPO, hasTool, httpGet, run, type RunResult, type Server } from './harness.js';

export const PAGE = 4096;
export const MiB = 1024 * 1024;

/** xorshift32: a fast, seeded generator (the data must be reproducible, not secret). */
export class Rng {
  private x: number;
  constructor(seed: number) { this.x = (seed >>> 0) || 0x9e3779b9; }
  next(): number {
    let x = this.x;
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    this.x = x;
    return x;
  }
  /** Fills b[off, off+n) (n a multiple of 4) with random bytes. */
  fill(b: Buffer, off: number, n: number): void {
    for (let i = off; i < off + n; i += 4) b.writeUInt32LE(this.next(), i);
  }
}

/** Kinds of tierPage(), in the order of their weights below. */
export const KIND_NAMES = ['zero', 'duplicate', 'half-random', 'random', 'text'] as const;

/**
 * A page generator: 10% zero pages, 20% duplicates of 64 templates, 40% pages half random and
 * half zero (compress to ~55%), 20% random (incompressible), 10% text (compress well, unique).
 * Its compressed size is about half the logical size, so the pool really fills.
 */
export class TierData {
  private readonly rng: Rng;
  private readonly templates: Buffer[] = [];
  constructor(seed: number) {
    this.rng = new Rng(seed);
    for (let i = 0; i < 64; i++) {
      const t = Buffer.alloc(PAGE);
      this.rng.fill(t, 0, PAGE / 2);
      t.write(`template ${i} `, PAGE / 2, 'latin1');
      this.templates.push(t);
    }
  }
  /** Fills page (PAGE bytes) with the next page of the sequence, for page index i. Returns the kind. */
  page(page: Buffer, i: number): number {
    const r = this.rng.next() % 10;
    if (r === 0) { page.fill(0); return 0; }
    if (r <= 2) { this.templates[this.rng.next() % this.templates.length]!.copy(page); return 1; }
    if (r <= 6) {
      this.rng.fill(page, 0, PAGE / 2);
      page.fill(0, PAGE / 2);
      page.writeUInt32LE(i, PAGE - 4); // unique even if the generator repeated
      return 2;
    }
    if (r <= 8) { this.rng.fill(page, 0, PAGE); return 3; }
    page.write(`page ${i}: the quick brown fox jumps over the lazy dog, again and again. `.repeat(60), 'latin1');
    return 4;
  }
  /** Fills a buffer of whole pages starting at page index first. */
  fill(buf: Buffer, first: number): void {
    for (let p = 0; p * PAGE < buf.length; p++) this.page(buf.subarray(p * PAGE, (p + 1) * PAGE), first + p);
  }
}

/** Writes `pages` pages of TierData(seed) to path. */
export function generateTierFile(path: string, pages: number, seed: number): void {
  const d = new TierData(seed);
  const fd = openSync(path, 'w');
  const chunk = Buffer.alloc(256 * PAGE);
  try {
    for (let p = 0; p < pages; p += 256) {
      const n = Math.min(256, pages - p);
      d.fill(chunk.subarray(0, n * PAGE), p);
      writeSync(fd, chunk, 0, n * PAGE);
    }
  } finally {
    closeSync(fd);
  }
}

export type StoreStats = Record<string, number>;

/** The "store" section of a server's /stats. */
export async function storeStats(s: Server): Promise<StoreStats> {
  assert.ok(s.http !== null, 'server has HTTP stats');
  const doc = JSON.parse(await httpGet(s.http, '/stats')) as { store: StoreStats; nbd: Record<string, unknown> };
  return doc.store;
}

/** /stats nbd.errors (errno name -> replies). */
export async function nbdErrors(s: Server): Promise<Record<string, number>> {
  const doc = JSON.parse(await httpGet(s.http!, '/stats')) as { nbd: { errors: Record<string, number> } };
  return doc.nbd.errors;
}

/** Polls fn every `ms` until it returns non-null, or gives up after `tries` (returns null). */
export async function poll<T>(fn: () => Promise<T | null> | T | null, tries: number, ms: number): Promise<T | null> {
  for (let i = 0; i < tries; i++) {
    const v = await fn();
    if (v !== null) return v;
    await new Promise((r) => setTimeout(r, ms));
  }
  return null;
}

export interface TierIoResult {
  ok?: number;
  bad?: number[];
  acked?: number[];
  errors: Record<string, number[]>;
  written?: number;
}

/** Runs tier_io.py under nbdsh against the server's socket (see the script for MODE and env). */
export async function tierIo(s: Server, env: Record<string, string>): Promise<TierIoResult & { raw: RunResult }> {
  const script = join(REPO, 'test/integration/nbd/tier_io.py');
  const r = await run('nbdsh', ['-c', `exec(open(${JSON.stringify(script)}).read())`], { env: { SOCK: s.socket, ...env } });
  const m = /^RESULT (.*)$/m.exec(r.stdout);
  assert.ok(r.code === 0 && m !== null, `tier_io.py ${env['MODE']} failed (exit ${r.code}):\n${r.stdout.slice(-2000)}\n${r.stderr.slice(-2000)}`);
  const res = JSON.parse(m[1]!) as TierIoResult;
  res.errors ??= {};
  return { ...res, raw: r };
}

/** VmRSS of a process in bytes. */
export function vmRss(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  assert.ok(m !== null, `no VmRSS for ${pid}`);
  return Number(m[1]) * 1024;
}

/** Bytes of `path` in the page cache (util-linux fincore), or null when fincore is missing. */
export async function cachedBytes(path: string): Promise<number | null> {
  if (!hasTool('fincore')) return null;
  const r = await run('fincore', ['--bytes', '--noheadings', '--output', 'RES', path]);
  assert.equal(r.code, 0, `fincore ${path}: ${r.stderr}`);
  return Number(r.stdout.trim());
}

/** Pages of `data` (a multiple of PAGE long) grouped by content: hex of the page -> page indices. Only for small sets. */
export function pagesWithContent(data: Buffer, content: Buffer): number[] {
  const out: number[] = [];
  for (let p = 0; p * PAGE < data.length; p++) {
    if (data.subarray(p * PAGE, (p + 1) * PAGE).equals(content)) out.push(p);
  }
  return out;
}
