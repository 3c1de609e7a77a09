/**
 * The dashboard of a real `zdedup serve`, in headless Chromium (Debian's chromium, driven by
 * playwright-core), while nbdcopy writes through NBD: the page loads with no console error and
 * no request beyond the server itself, every chart is drawn by uPlot, and the numbers move with
 * the writes and match /stats once the writes stop. A screenshot goes to a temp dir, and to
 * docs/dashboard.png when ZDEDUP_UPDATE_SCREENSHOT=1.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { copyFileSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { REPO, hasTool, httpGet, runOk, startServer } from './nbd/harness.js';
import { chromiumMissing, launchChromium } from '../helpers/chromium.js';

const skip = chromiumMissing() || (!hasTool('nbdcopy') ? 'needs nbdcopy (apt-get install libnbd-bin)' : false);

const P = 4096;

/** zero pages, same-filled pages, text pages each written `copies` times, random pages. */
function pageFile(path: string, o: { zero: number; same: number; text: number; copies: number; random: number; seed: number }): void {
  const parts: Buffer[] = [];
  for (let i = 0; i < o.zero; i++) parts.push(Buffer.alloc(P));
  for (let i = 0; i < o.same; i++) parts.push(Buffer.alloc(P, 0x11 + (i % 7)));
  const text = Array.from({ length: o.text }, (_, i) => Buffer.from(`record ${o.seed}:${i} ${'payload '.repeat(600)}`.slice(0, P)));
  for (let c = 0; c < o.copies; c++) parts.push(...text);
  for (let i = 0; i < o.random; i++) parts.push(randomBytes(P));
  writeFileSync(path, Buffer.concat(parts));
}

interface Doc { store: Record<string, number>; exports: { name: string; data_pages: number; zero_pages: number }[] }

test('dashboard: loads clean in Chromium, draws its charts, follows NBD writes and matches /stats', { skip, timeout: 180_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'zdedup-dashboard-'));
  const server = await startServer(['--size', '64M', '--codec', 'lz4']);
  const browser = await launchChromium({ width: 1400, height: 1000 });
  const ctx = browser.ctx;
  try {
    const origin = `http://${server.http!}`;
    const page = await ctx.newPage();
    const problems: string[] = [];
    const foreign: string[] = [];
    page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') problems.push(`console ${m.type()}: ${m.text()}`); });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('requestfailed', (r) => { if (!r.url().endsWith('/events')) problems.push(`request failed: ${r.url()}`); });
    page.on('request', (r) => { if (!r.url().startsWith(`${origin}/`)) foreign.push(r.url()); });
    await page.goto(`${origin}/`);

    const frames = (): Promise<number> => page.evaluate(() => (window as unknown as { zdedupDashboard: { frames: number } }).zdedupDashboard.frames);
    await page.waitForFunction(() => (window as unknown as { zdedupDashboard?: { frames: number } }).zdedupDashboard?.frames! >= 2, null, { timeout: 20_000 });
    assert.equal(await page.locator('#status').getAttribute('data-state'), 'live');

    /** The dashboard's figure for a store stat (the store table's data-value). */
    const shown = async (stat: string): Promise<number> => Number(await page.locator(`#store-table [data-stat="${stat}"]`).getAttribute('data-value'));
    /** Waits until the page shows what /stats says now (the writes have stopped, so /stats is still). */
    const settle = async (): Promise<Doc> => {
      const doc = JSON.parse(await httpGet(server.http!, '/stats')) as Doc;
      await page.waitForFunction(
        (want) => {
          const d = (window as unknown as { zdedupDashboard: { last: { store: Record<string, number> } } }).zdedupDashboard.last;
          return d.store.stored_pages === want.stored_pages && d.store.store_calls === want.store_calls;
        },
        doc.store, { timeout: 20_000 },
      );
      return doc;
    };

    const before = await settle();
    assert.equal(await shown('stored_pages'), before.store.stored_pages);

    // First write: zero, same-filled, duplicated text and random pages.
    const a = join(dir, 'a.img');
    pageFile(a, { zero: 300, same: 50, text: 200, copies: 3, random: 400, seed: 1 });
    await runOk('nbdcopy', ['--flush', a, server.uri()]);
    const first = await settle();
    assert.ok(first.store.stored_pages > before.store.stored_pages, 'the write stored pages');
    for (const k of ['stored_pages', 'same_filled_pages', 'duplicate_pages', 'unique_objects', 'store_calls', 'pool_total_size', 'logical_bytes']) {
      assert.equal(await shown(k), first.store[k], `${k} on the page = /stats`);
    }
    assert.equal(Number(await page.locator('#cards [data-stat="dedup_ratio"]').getAttribute('data-value')), first.store.dedup_ratio);
    const row = page.locator('#exports-table tr[data-export=""]');
    assert.equal(Number(await row.locator('[data-field="data_pages"]').getAttribute('data-value')), first.exports[0]!.data_pages);

    // Second write, more and different pages: the numbers move again and still match.
    const b = join(dir, 'b.img');
    pageFile(b, { zero: 100, same: 20, text: 300, copies: 4, random: 900, seed: 2 });
    await runOk('nbdcopy', ['--flush', b, server.uri()]);
    const second = await settle();
    assert.notEqual(second.store.store_calls, first.store.store_calls);
    assert.equal(await shown('stored_pages'), second.store.stored_pages);
    assert.equal(await shown('store_calls'), second.store.store_calls);

    // Every chart was drawn by uPlot (a canvas with a size) and holds the frames seen so far;
    // the throughput chart saw the writes.
    const n = await frames();
    for (const name of ['ratios', 'pages', 'memory', 'throughput', 'requests', 'activity', 'errors']) {
      const box = await page.locator(`#chart-${name} .uplot canvas`).boundingBox();
      assert.ok(box !== null && box.width > 200 && box.height > 100, `chart ${name} has a drawn canvas`);
      const info = await page.evaluate((c) => (window as unknown as { zdedupDashboard: { charts: Record<string, { series: string[]; points: number }> } }).zdedupDashboard.charts[c], name);
      assert.ok(info !== undefined && info.points >= Math.min(n, 3), `chart ${name} holds the frames`);
    }
    const written = await page.evaluate(() => {
      const d = (window as unknown as { zdedupDashboard: { data(n: string): (number | null)[][] | null; charts: Record<string, { series: string[] }> } }).zdedupDashboard;
      const data = d.data('throughput')!;
      return data[1 + d.charts.throughput!.series.indexOf('written')]!;
    });
    assert.ok(written.some((v) => v !== null && v > 0), 'the throughput chart shows bytes written');
    const pages = await page.evaluate(() => (window as unknown as { zdedupDashboard: { charts: Record<string, { series: string[] }> } }).zdedupDashboard.charts.pages!.series);
    assert.deepEqual(pages, ['zero', 'same-filled (not zero)', 'duplicate', 'unique']);

    await page.locator('body').screenshot({ path: join(dir, 'dashboard.png') });
    if (process.env.ZDEDUP_UPDATE_SCREENSHOT === '1') copyFileSync(join(dir, 'dashboard.png'), join(REPO, 'docs/dashboard.png'));
    assert.deepEqual(foreign, [], 'nothing is fetched from anywhere but the server');
    assert.deepEqual(problems, [], 'no console errors or failed requests');
  } finally {
    await browser.close();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
