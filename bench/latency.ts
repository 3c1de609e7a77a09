/**
 * `npm run bench:latency`: the longest single operation while a store grows to 16 Mi objects and
 * shrinks again (issue 8, item 6: no latency cliffs).
 *
 * A PageStore (RAM only, lz4) is filled with distinct, compressible pages (a fixed template with a
 * counter stamped into it, so no page deduplicates and none is same-filled) through storeBatch of
 * BATCH pages; every batch is timed. Then single loads and single invalidates at random slots are
 * timed one by one, and a shrink phase invalidates most objects in batches of BATCH pages
 * (invalidateRange, as an NBD TRIM would), timed per batch. Each phase reports the maximum, p99.9,
 * p99 and median, and where its slowest batches happened (object count), so a pause can be traced
 * to a resize. Garbage-collection pauses are counted beside them (they are the floor the store
 * cannot go below). The loop yields to the event loop every YIELD_EVERY batches, as a server does.
 *
 * The bound to meet: no single store, load or invalidate batch over 2 ms at 16 Mi objects.
 * Results: bench/results/latency-<date>.{json,md}.
 *
 *   ZDEDUP_LATENCY_OBJECTS  objects to grow to (default 16 Mi)
 *   ZDEDUP_LATENCY_BATCH    pages per timed batch (default 64)
 *   ZDEDUP_LATENCY_SINGLES  single loads and invalidates timed at the end (default 100 000 each)
 *   ZDEDUP_LATENCY_KEEP     keep 1 in KEEP batches in the shrink phase (default 16: 15/16 invalidated)
 *   ZDEDUP_LATENCY_LABEL    a word for the result file name and heading (e.g. "before")
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadavg } from 'node:os';
import { PerformanceObserver, performance } from 'node:perf_hooks';
import { setImmediate as yieldLoop } from 'node:timers/promises';
import { PageStore } from '../src/core/page-store.js';
import { describeMachine, machineMarkdown } from './machine.js';

const PAGE = 4096;
const OBJECTS = Number(process.env.ZDEDUP_LATENCY_OBJECTS ?? 16 * 1024 * 1024);
const BATCH = Number(process.env.ZDEDUP_LATENCY_BATCH ?? 64);
const SINGLES = Number(process.env.ZDEDUP_LATENCY_SINGLES ?? 100_000);
const KEEP = Number(process.env.ZDEDUP_LATENCY_KEEP ?? 16);
const LABEL = process.env.ZDEDUP_LATENCY_LABEL ?? '';
const BOUND_MS = 2;
const CONTROL_OPS = 65536;
const CONTROL_SPIN = 30_000; // ~0.15 ms on the machine of the first results, about one batch
const YIELD_EVERY = 256;

interface Phase {
  phase: string;
  ops: number;           // timed operations (batches or single calls)
  pages_per_op: number;
  max_ms: number;
  p999_ms: number;
  p99_ms: number;
  p50_ms: number;
  over_bound: number;    // operations over BOUND_MS
  over_bound_during_gc: number;          // ... of which overlapped a garbage-collection pause
  over_bound_index_resizing: number;     // ... of which ran while the fingerprint index resized
  over_bound_index_resize_start: number; // ... of which started a resize (allocated the new table)
  ops_index_resizing: number;            // operations that ran while the index resized
  max_ms_index_resize_start: number;     // the longest operation that started a resize
  slowest: { ms: number; objects: number }[]; // the 5 slowest, with the object count before them
  seconds: number;
}

/**
 * Times of one phase, in preallocated arrays: each op's duration, start, the store's object
 * count before it, and what was under way (RESIZING: the fingerprint index held two tables
 * during the op; RESIZE_START: the op started a resize), for attributing the slow ones.
 */
class Timer {
  readonly ms: Float64Array;
  readonly t0s: Float64Array;
  readonly at: Float64Array;
  readonly what: Uint8Array;
  n = 0;
  private t0 = 0;
  private wasResizing = false;
  constructor(cap: number, private readonly index: { resizing: boolean } | null = null) {
    this.ms = new Float64Array(cap); this.t0s = new Float64Array(cap); this.at = new Float64Array(cap); this.what = new Uint8Array(cap);
  }
  start(): void {
    this.wasResizing = this.index?.resizing ?? false;
    this.t0 = performance.now();
  }
  stop(objects: number): void {
    const t = performance.now();
    const i = this.n++;
    this.ms[i] = t - this.t0; this.t0s[i] = this.t0; this.at[i] = objects;
    const now = this.index?.resizing ?? false;
    this.what[i] = (this.wasResizing || now ? RESIZING : 0) | (!this.wasResizing && now ? RESIZE_START : 0);
  }
  summary(phase: string, pagesPerOp: number, seconds: number): Phase {
    const ms = this.ms.subarray(0, this.n);
    const sorted = Float64Array.from(ms).sort();
    const q = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? 0;
    const order = Array.from({ length: this.n }, (_, i) => i).sort((a, b) => ms[b]! - ms[a]!).slice(0, 5);
    let over = 0, overGc = 0, overResizing = 0, overResizeStart = 0, resizing = 0, maxStart = 0;
    for (let i = 0; i < this.n; i++) {
      if ((this.what[i]! & RESIZING) !== 0) resizing++;
      if ((this.what[i]! & RESIZE_START) !== 0) maxStart = Math.max(maxStart, ms[i]!);
      if (ms[i]! <= BOUND_MS) continue;
      over++;
      if (gcOverlaps(this.t0s[i]!, this.t0s[i]! + ms[i]!)) overGc++;
      if ((this.what[i]! & RESIZING) !== 0) overResizing++;
      if ((this.what[i]! & RESIZE_START) !== 0) overResizeStart++;
    }
    return {
      phase, ops: this.n, pages_per_op: pagesPerOp,
      max_ms: sorted[sorted.length - 1] ?? 0, p999_ms: q(0.999), p99_ms: q(0.99), p50_ms: q(0.5),
      over_bound: over, over_bound_during_gc: overGc, over_bound_index_resizing: overResizing,
      over_bound_index_resize_start: overResizeStart, ops_index_resizing: resizing, max_ms_index_resize_start: maxStart,
      slowest: order.map((i) => ({ ms: ms[i]!, objects: this.at[i]! })), seconds,
    };
  }
}

const RESIZING = 1, RESIZE_START = 2;

// Garbage-collection pauses (start, end), delivered while the loop yields.
const gc = { count: 0, max_ms: 0, total_ms: 0 };
const gcStart = new Float64Array(1 << 20), gcEnd = new Float64Array(1 << 20);
const obs = new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    if (gc.count < gcStart.length) { gcStart[gc.count] = e.startTime; gcEnd[gc.count] = e.startTime + e.duration; }
    gc.count++; gc.total_ms += e.duration; if (e.duration > gc.max_ms) gc.max_ms = e.duration;
  }
});
obs.observe({ entryTypes: ['gc'] });

/** True when a recorded GC pause overlaps [t0, t1] (pauses arrive in order of start). */
function gcOverlaps(t0: number, t1: number): boolean {
  let lo = 0, hi = Math.min(gc.count, gcStart.length);
  while (lo < hi) { const m = (lo + hi) >> 1; if (gcEnd[m]! < t0) lo = m + 1; else hi = m; }
  return lo < Math.min(gc.count, gcStart.length) && gcStart[lo]! <= t1;
}

/** Distinct compressible pages: a mostly-zero template (not same-filled) with the counter stamped in. */
function stamp(buf: Buffer, at: number, n: number): void {
  buf.writeUInt32LE(n, at);
  buf.writeUInt32LE(Math.imul(n, 0x9e3779b1) >>> 0, at + 2048);
}

/** xorshift32, for random slots. */
let seed = 0x2545f491;
function rand(n: number): number {
  seed ^= seed << 13; seed >>>= 0; seed ^= seed >>> 17; seed ^= seed << 5; seed >>>= 0;
  return seed % n;
}

async function main(): Promise<void> {
  const machine = describeMachine();
  // Address space is cheap: a column's 4 GiB reservation commits nothing until it grows (typed.ts).
  const rssR0 = process.memoryUsage().rss;
  const reservations = Array.from({ length: 64 }, () => new (ArrayBuffer as unknown as { new (n: number, o: { maxByteLength: number }): ArrayBuffer })(0, { maxByteLength: 2 ** 32 - 1 }));
  const reservationRss = { reservations: reservations.length, bytes_each: 2 ** 32 - 1, rss_growth: process.memoryUsage().rss - rssR0 };
  reservations.length = 0;
  const load0 = loadavg();
  const rss0 = process.memoryUsage().rss;
  const store = new PageStore({ codec: 'lz4' });
  const area = store.createArea('latency', OBJECTS);
  const batches = Math.floor(OBJECTS / BATCH);
  const pages = Buffer.alloc(BATCH * PAGE);
  for (let i = 0; i < BATCH; i++) pages.write('zdedup latency bench', i * PAGE + 100, 'latin1');
  const objects = () => store.stats().unique_objects;
  // White-box, for attribution only: the area's fingerprint index (a private field of PageStore).
  const index = ((store as unknown as { domainIndex?: { resizing?: boolean }[] }).domainIndex?.[0] ?? null) as { resizing: boolean } | null;
  const ix = index !== null && typeof index.resizing === 'boolean' ? index : null;
  const phases: Phase[] = [];
  let stored = 0;

  // 0. control: a fixed CPU-only loop of about one batch's time, timed the same way. Its outliers are
  // this machine's own noise (preemption by other work, timer ticks), not the store's.
  const control = new Timer(CONTROL_OPS);
  let t = performance.now();
  let sink = 0;
  for (let i = 0; i < CONTROL_OPS; i++) {
    control.start();
    for (let k = 0; k < CONTROL_SPIN; k++) sink = (Math.imul(sink, 31) + k) | 0;
    control.stop(0);
    if ((i + 1) % YIELD_EVERY === 0) await yieldLoop();
  }
  if (sink === 42) process.stderr.write('');
  phases.push(control.summary('control: CPU loop (machine noise)', 0, (performance.now() - t) / 1000));

  // 1. grow
  const grow = new Timer(batches, ix);
  t = performance.now();
  for (let b = 0; b < batches; b++) {
    for (let i = 0; i < BATCH; i++) stamp(pages, i * PAGE, b * BATCH + i);
    grow.start();
    const n = store.storeBatch(area, b * BATCH, pages);
    grow.stop(stored);
    if (n !== BATCH) throw new Error(`batch ${b}: stored ${n} of ${BATCH} (${store.lastReject})`);
    stored += n;
    if ((b + 1) % YIELD_EVERY === 0) await yieldLoop();
    if ((b + 1) % (batches >> 4 || 1) === 0) process.stderr.write(`grow ${stored} objects, ${((performance.now() - t) / 1000).toFixed(1)} s\n`);
  }
  phases.push(grow.summary('grow: storeBatch', BATCH, (performance.now() - t) / 1000));
  const grown = objects();
  const statsGrown = store.stats();
  const rssGrown = process.memoryUsage().rss;

  // 2. single loads and invalidates at the full size
  const into = Buffer.alloc(PAGE);
  const loads = new Timer(SINGLES);
  t = performance.now();
  for (let i = 0; i < SINGLES; i++) {
    const slot = rand(stored);
    loads.start();
    const r = store.load(area, slot, into);
    loads.stop(grown);
    if (r !== 'hit' || into.readUInt32LE(0) !== slot) throw new Error(`load ${slot}: ${r}, counter ${into.readUInt32LE(0)}`);
    if ((i + 1) % (YIELD_EVERY * 16) === 0) await yieldLoop();
  }
  phases.push(loads.summary('full: single load', 1, (performance.now() - t) / 1000));

  const invs = new Timer(SINGLES, ix);
  t = performance.now();
  for (let i = 0; i < SINGLES; i++) {
    const slot = rand(stored);
    invs.start();
    store.invalidatePage(area, slot);
    invs.stop(grown - i);
    if ((i + 1) % (YIELD_EVERY * 16) === 0) await yieldLoop();
  }
  phases.push(invs.summary('full: single invalidate', 1, (performance.now() - t) / 1000));

  // 3. shrink: invalidate all but 1 in KEEP batches
  const shrink = new Timer(batches, ix);
  t = performance.now();
  let live = objects();
  for (let b = 0; b < batches; b++) {
    if (b % KEEP === 0) continue;
    shrink.start();
    store.invalidateRange(area, b * BATCH, BATCH);
    shrink.stop(live);
    if ((shrink.n + 1) % YIELD_EVERY === 0) { await yieldLoop(); live = objects(); }
  }
  phases.push(shrink.summary('shrink: invalidateRange', BATCH, (performance.now() - t) / 1000));
  const left = objects();

  // 4. the survivors still load
  const after = new Timer(SINGLES);
  t = performance.now();
  for (let i = 0; i < SINGLES; i++) {
    const b = rand(batches) & ~(KEEP - 1);
    const slot = b * BATCH + rand(BATCH);
    after.start();
    const r = store.load(area, slot, into);
    after.stop(left);
    if (r === 'hit' && into.readUInt32LE(0) !== slot) throw new Error(`load ${slot} after shrink: counter ${into.readUInt32LE(0)}`);
  }
  phases.push(after.summary('shrunk: single load', 1, (performance.now() - t) / 1000));
  await yieldLoop();
  obs.disconnect();

  const result = {
    label: LABEL, machine, objects: grown, objects_after_shrink: left, batch_pages: BATCH, bound_ms: BOUND_MS,
    load_average_before: load0, load_average_after: loadavg(),
    rss_before: rss0, rss_grown: rssGrown, rss_end: process.memoryUsage().rss,
    metadata_bytes_grown: statsGrown.metadata_bytes, pool_total_size_grown: statsGrown.pool_total_size,
    metadata_bytes_per_object: statsGrown.metadata_bytes / Math.max(1, grown),
    reservation_rss: reservationRss,
    gc: { count: gc.count, max_ms: gc.max_ms, total_ms: gc.total_ms }, phases,
  };

  const f = (x: number) => x.toFixed(3);
  const md = [
    `# Latency while growing to ${grown.toLocaleString('en')} objects${LABEL ? ` (${LABEL})` : ''}`,
    '',
    machineMarkdown(machine),
    '',
    `Load average ${load0.map((x) => x.toFixed(2)).join(' ')} before, ${result.load_average_after.map((x) => x.toFixed(2)).join(' ')} after (other work shares this machine; its pauses show up as outliers).`,
    `PageStore, lz4, RAM only; ${BATCH}-page batches of distinct pages. Bound: ${BOUND_MS} ms per operation.`,
    `Grown: metadata ${(statsGrown.metadata_bytes / 2 ** 20).toFixed(0)} MiB (${result.metadata_bytes_per_object.toFixed(2)} B/object), pool ${(statsGrown.pool_total_size / 2 ** 20).toFixed(0)} MiB, RSS ${(rssGrown / 2 ** 20).toFixed(0)} MiB.`,
    `Reservations: ${reservationRss.reservations} buffers of maxByteLength 4 GiB - 1 grew RSS by ${(reservationRss.rss_growth / 2 ** 10).toFixed(0)} KiB (columns reserve the maximum once they outgrow 64 KiB).`,
    `GC: ${gc.count} pauses, longest ${gc.max_ms.toFixed(2)} ms, ${gc.total_ms.toFixed(0)} ms in all.`,
    '',
    `"over bound": operations over ${BOUND_MS} ms, and of those how many overlapped a GC pause, ran while the fingerprint index was resizing, or started a resize.`,
    `The control row is a fixed CPU loop of about one batch, timed the same way: its tail is this machine's own noise.`,
    '',
    '| phase | ops | pages/op | max ms | p99.9 ms | p99 ms | p50 ms | over bound (GC / resizing / resize start) | ops while index resizing | max ms of a resize start | slowest (ms @ objects) | s |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|',
    ...phases.map((p) => `| ${p.phase} | ${p.ops} | ${p.pages_per_op} | ${f(p.max_ms)} | ${f(p.p999_ms)} | ${f(p.p99_ms)} | ${f(p.p50_ms)} | ` +
      `${p.over_bound} (${p.over_bound_during_gc} / ${p.over_bound_index_resizing} / ${p.over_bound_index_resize_start}) | ${p.ops_index_resizing} | ${f(p.max_ms_index_resize_start)} | ` +
      p.slowest.map((s) => `${s.ms.toFixed(2)} @ ${s.objects}`).join(', ') + ` | ${p.seconds.toFixed(1)} |`),
    '',
  ].join('\n');
  process.stdout.write(md + '\n');
  const dir = join(process.cwd(), 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const name = `latency-${machine.date.slice(0, 10)}${LABEL ? `-${LABEL}` : ''}`;
  writeFileSync(join(dir, `${name}.json`), JSON.stringify(result, null, 2) + '\n');
  writeFileSync(join(dir, `${name}.md`), md);
}

await main();
