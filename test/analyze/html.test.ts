/**
 * The HTML report in headless Chromium (Debian's chromium, driven by playwright-core): it loads
 * with no network request, both charts render with one bar per technique and one segment per
 * page kind, and every number checked (chart bars, totals table, embedded JSON) matches the
 * --json output of the same run. A screenshot is written to a temp dir, and to
 * docs/analyze-report.png when ZDEDUP_UPDATE_SCREENSHOT=1.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, writeFileSync, copyFileSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ROOT, haveGcc, isRoot, runAnalyze, startFixture, type Fixture } from './fixtures.js';
import type { Report } from '../../src/analyze/report.js';
import { chromiumMissing, launchChromium } from '../helpers/chromium.js';

const skip = chromiumMissing();

function pageFile(path: string, P: number, zero: number, copies: number, distinct: Buffer[], random: number): void {
  const parts: Buffer[] = [];
  for (let i = 0; i < zero; i++) parts.push(Buffer.alloc(P));
  for (let c = 0; c < copies; c++) parts.push(...distinct);
  for (let i = 0; i < random; i++) parts.push(randomBytes(P));
  writeFileSync(path, Buffer.concat(parts));
}

test('HTML report renders its charts in Chromium and its numbers match the JSON', { skip, timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'zdedup-analyze-html-'));
  const P = 4096;
  const text = (i: number): Buffer => { const b = Buffer.alloc(P); b.write(`config entry ${i}; `.repeat(300), 'latin1'); return b; };
  const shared = Array.from({ length: 40 }, (_, i) => text(i));
  pageFile(join(dir, 'db-cache.img'), P, 300, 3, shared, 200);
  pageFile(join(dir, 'vm-disk.img'), P, 900, 2, shared.slice(0, 20), 120);
  pageFile(join(dir, 'swap.img'), P, 150, 1, [text(1000), text(1001)], 400);
  const args = ['--file', join(dir, 'db-cache.img'), '--file', join(dir, 'vm-disk.img'), '--file', join(dir, 'swap.img')];
  // With root and gcc, two live processes join the report so the per-source chart shows processes too.
  const procs: Fixture[] = [];
  if (isRoot && haveGcc()) {
    for (const seed of [11, 11]) procs.push(await startFixture({ zero: 400, same: 30, distinct: 150, copies: 2, random: 100, readonly: 10, seed }));
    for (const f of procs) args.unshift('--pid', String(f.pid));
  }
  const html = join(dir, 'report.html');
  let report: Report;
  try {
    const r = runAnalyze([...args, '--json', '--html', html]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.report);
    report = r.report;
  } finally {
    await Promise.all(procs.map((f) => f.stop()));
  }

  const browser = await launchChromium({ width: 1100, height: 900 });
  const ctx = browser.ctx;
  try {
    const page = await ctx.newPage();
    const requests: string[] = [];
    page.on('request', (q) => requests.push(q.url()));
    const url = pathToFileURL(html).href;
    await page.goto(url);
    assert.deepEqual(requests, [url], 'the report loads nothing but itself');

    // Embedded JSON is the same report as --json.
    const embedded = JSON.parse(await page.locator('#zdedup-report').textContent() ?? 'null') as Report;
    assert.deepEqual(embedded, report);

    // Savings chart: one bar per (codec, technique), rendered with a width, values from the JSON.
    const bars = await page.locator('#chart-savings rect.bar').evaluateAll((els) => els.map((e) => ({
      codec: e.getAttribute('data-codec')!, technique: e.getAttribute('data-technique')!,
      value: Number(e.getAttribute('data-value')), width: e.getBoundingClientRect().width,
    })));
    assert.equal(bars.length, report.options.codecs.length * 5);
    for (const b of bars) {
      assert.ok(b.width > 0, `${b.codec}/${b.technique} bar rendered`);
      const want = b.technique === 'none' ? report.totals.bytes
        : report.totals.projections[b.codec]![b.technique as 'zdedup']!.total_bytes;
      assert.equal(b.value, want, `${b.codec}/${b.technique}`);
    }
    // The bars are drawn to scale: zdedup's bar is narrower than uncompressed's.
    const lz4 = (t: string): number => bars.find((b) => b.codec === 'lz4' && b.technique === t)!.width;
    assert.ok(lz4('zdedup') < lz4('compression_same_filled') && lz4('compression_same_filled') < lz4('none'));

    // Per-source chart: segments add up to each source's pages.
    const segs = await page.locator('#chart-sources rect.seg').evaluateAll((els) => els.map((e) => ({
      source: Number(e.getAttribute('data-source')), part: e.getAttribute('data-part')!, value: Number(e.getAttribute('data-value')),
      width: e.getBoundingClientRect().width,
    })));
    const withPages = report.sources.filter((s) => s.pages > 0);
    assert.equal(segs.length, withPages.length * 5);
    for (const s of withPages) {
      const mine = segs.filter((g) => g.source === s.id);
      assert.equal(mine.reduce((a, g) => a + g.value, 0), s.pages, `segments of ${s.name}`);
      assert.equal(mine.find((g) => g.part === 'zero')!.value, s.zero_pages);
      assert.equal(mine.find((g) => g.part === 'duplicate_cross')!.value, s.duplicate_pages_cross_source);
      assert.ok(mine.reduce((a, g) => a + g.width, 0) > 0, `${s.name} bar rendered`);
    }

    // Totals table.
    const cells = await page.locator('#totals td[data-field]').evaluateAll((els) => els.map((e) => [e.getAttribute('data-field')!, Number(e.getAttribute('data-value'))] as const));
    assert.ok(cells.length >= 8);
    for (const [f, v] of cells) assert.equal(v, (report.totals as unknown as Record<string, number>)[f], f);
    for (const f of ['pages', 'zero_pages', 'same_filled_pages', 'duplicate_pages']) assert.ok(cells.some(([g]) => g === f), f);

    const shot = join(dir, 'analyze-report.png');
    await page.screenshot({ path: shot, fullPage: true });
    if (process.env.ZDEDUP_UPDATE_SCREENSHOT === '1') copyFileSync(shot, join(ROOT, 'docs', 'analyze-report.png'));
  } finally {
    await browser.close();
  }
});
