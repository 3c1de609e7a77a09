/**
 * Memory stays bounded: 10 GiB of distinct pages (the worst case for the content index) streamed
 * into `zdedup analyze --file /dev/stdin` keep its peak RSS (VmHWM, polled) under 1 GiB, and
 * every page is counted. A tiny --index-memory makes the index fill: new contents are then
 * counted unique and reported as index_full_pages instead of growing memory.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { CLI } from './fixtures.js';
import type { Report } from '../../src/analyze/report.js';

const P = 4096;
const CHUNK_PAGES = 256;

/** Streams `pages` distinct, compressible pages (a counter in each) into the analyzer's stdin. */
async function scanStream(pages: number, extra: string[]): Promise<{ report: Report; hwmKiB: number }> {
  const child = spawn(process.execPath, [CLI, 'analyze', '--file', '/dev/stdin', '--zstd-levels', '', '--json', ...extra], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  let hwm = 0;
  const poll = setInterval(() => {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      if (m) hwm = Math.max(hwm, Number(m[1]));
    } catch { /* exited */ }
  }, 50);
  let gone = false;
  const exited = new Promise<number>((res) => child.on('exit', (c) => { gone = true; res(c ?? -1); }));
  child.stdin.on('error', () => { /* EPIPE when the child died early: the exit code tells */ });
  const buf = Buffer.alloc(CHUNK_PAGES * P, 'page of the memory test ');
  for (let p = 0; p < pages && !gone; p += CHUNK_PAGES) {
    for (let k = 0; k < CHUNK_PAGES; k++) { buf.writeDoubleLE(p + k, k * P + 64); buf.writeDoubleLE(p + k, k * P + 2048); }
    if (!child.stdin.write(buf)) await Promise.race([new Promise((r) => child.stdin.once('drain', r)), exited]);
  }
  child.stdin.end();
  const code = await exited;
  clearInterval(poll);
  assert.equal(code, 0);
  return { report: JSON.parse(out) as Report, hwmKiB: hwm };
}

test('10 GiB of distinct pages are scanned within 1 GiB RSS', { timeout: 300_000 }, async () => {
  const pages = 10 * 2 ** 30 / P;
  const { report, hwmKiB } = await scanStream(pages, []);
  assert.equal(report.totals.pages, pages);
  assert.equal(report.totals.unique_pages, pages);
  assert.equal(report.totals.distinct_contents, pages);
  assert.equal(report.totals.index_full_pages, 0);
  assert.ok(hwmKiB > 0, 'RSS was sampled');
  assert.ok(hwmKiB < 1024 * 1024, `peak RSS ${hwmKiB} KiB < 1 GiB`);
});

test('a full index counts new contents as unique and says so', { timeout: 120_000 }, async () => {
  const pages = 800 * CHUNK_PAGES;
  const { report } = await scanStream(pages, ['--index-memory', '1M']);
  const t = report.totals;
  assert.equal(t.pages, pages);
  assert.ok(t.index_full_pages > 0);
  assert.equal(t.distinct_contents + t.index_full_pages, pages);
  assert.ok(t.distinct_contents * 28 <= 1 << 20);
});
