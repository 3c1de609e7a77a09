/**
 * `zdedup analyze --pid` on processes with a known layout (fixtures.ts): exact counts for the
 * fixture's region (from the per-mapping breakdown), the process totals containing them,
 * cross-process duplicates and the top sharing pair, fork-shared frames counted once, the
 * kernel zero page skipped, and a vanished pid reported while the scan goes on.
 * Needs root (ptrace access to /proc/PID/mem of a sibling, PFNs in pagemap) and gcc.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { haveGcc, isRoot, runAnalyze, startFixture, type Fixture } from './fixtures.js';
import type { MappingReport, Report, SourceReport } from '../../src/analyze/report.js';
import { SLOT_METADATA_BYTES, OBJECT_METADATA_BYTES } from '../../src/core/page-store.js';

const skip = !isRoot ? 'needs root: /proc/PID/mem of a sibling process and PFNs in pagemap (run the tests as root)'
  : !haveGcc() ? 'needs gcc to build the fixture process (apt-get install gcc)' : false;

function source(r: Report, pid: number): SourceReport {
  const s = r.sources.find((x) => x.pid === pid);
  assert.ok(s, `source for pid ${pid} in report`);
  return s;
}

function region(s: SourceReport, addr: string): MappingReport {
  const m = s.mappings?.find((x) => x.start === addr);
  assert.ok(m, `mapping at ${addr} in pid ${s.pid} (mappings: ${s.mappings?.map((x) => x.start).join(',')})`);
  return m;
}

test('exact counts for a process with known zero, same-filled, duplicate, random and read-only pages', { skip }, async () => {
  const L = { zero: 37, same: 11, distinct: 23, copies: 3, random: 19, readonly: 13, seed: 7001 };
  const f = await startFixture(L);
  try {
    const { code, report } = runAnalyze(['--pid', String(f.pid), '--mappings', '--json', '--zstd-levels', '1']);
    assert.equal(code, 0);
    assert.ok(report);
    const s = source(report, f.pid);
    assert.equal(s.status, 'ok');
    const m = region(s, f.addr);
    const present = L.zero + L.same + L.distinct * L.copies + L.random;
    assert.equal(m.pages, present);
    assert.equal(m.zero_pages, L.zero);
    assert.equal(m.same_filled_pages, L.zero + L.same);
    assert.equal(m.duplicate_pages_within_source, L.distinct * (L.copies - 1));
    assert.equal(m.duplicate_pages_cross_source, 0);
    assert.equal(m.duplicate_pages, L.distinct * (L.copies - 1));
    assert.equal(m.unique_pages, L.distinct + L.random);
    assert.equal(m.skipped.zero_page_mappings, L.readonly);
    assert.equal(m.skipped.shared_frame_pages, 0);
    // random pages never save 1/8; the distinct pages are half letters and do
    assert.equal(m.compressed.lz4!.incompressible_pages, L.random);
    // the process totals contain the region
    assert.ok(s.pages >= m.pages && s.zero_pages >= m.zero_pages && s.duplicate_pages >= m.duplicate_pages);
    assert.equal(report.totals.pages, s.pages);
    assert.equal(report.totals.same_filled_pages, s.same_filled_pages);
    // zdedup stores the region's unique pages only: its data bytes are less than compression's
    const p = m.projections.lz4!;
    assert.ok(p.zdedup.data_bytes < p.compression_same_filled.data_bytes);
    assert.equal(p.zdedup.metadata_bytes, SLOT_METADATA_BYTES * m.pages + OBJECT_METADATA_BYTES * (m.unique_pages + m.duplicate_pages_cross_source));
  } finally {
    await f.stop();
  }
});

test('two processes with the same pages: cross-process duplicates and the top sharing pair', { skip }, async () => {
  const L = { zero: 0, same: 0, distinct: 41, copies: 1, random: 5, readonly: 0, seed: 9002 };
  const a = await startFixture(L);
  const b = await startFixture(L);
  try {
    const { code, report } = runAnalyze(['--pid', String(a.pid), '--pid', String(b.pid), '--mappings', '--json', '--zstd-levels', '']);
    assert.equal(code, 0);
    assert.ok(report);
    const ra = region(source(report, a.pid), a.addr);
    const sb = source(report, b.pid);
    const rb = region(sb, b.addr);
    assert.equal(ra.unique_pages, L.distinct + L.random);
    assert.equal(rb.duplicate_pages_cross_source, L.distinct);
    assert.equal(rb.duplicate_pages_within_source, 0);
    assert.equal(rb.unique_pages, L.random);
    const pair = report.top_sharing_pairs.find((p) => p.b === sb.id);
    assert.ok(pair, 'pair (a, b) reported');
    assert.equal(pair.a, source(report, a.pid).id);
    assert.ok(pair.pages >= L.distinct);
    // one shared domain stores the 41 pages once; one domain per source stores them twice
    const pr = report.totals.projections.lz4!;
    assert.ok(pr.zdedup.data_bytes < pr.zdedup_per_source!.data_bytes);
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
});

test('fork: frames shared copy-on-write are counted once, in the first process', { skip }, async () => {
  const L = { zero: 5, same: 3, distinct: 7, copies: 2, random: 4, readonly: 6, seed: 9003, fork: true };
  const f: Fixture = await startFixture(L);
  try {
    assert.ok(f.child > 0);
    const { report } = runAnalyze(['--pid', String(f.pid), '--pid', String(f.child), '--mappings', '--json', '--zstd-levels', '']);
    assert.ok(report);
    const parent = region(source(report, f.pid), f.addr);
    const child = region(source(report, f.child), f.addr);
    const present = L.zero + L.same + L.distinct * L.copies + L.random;
    assert.equal(parent.pages, present);
    assert.equal(parent.skipped.shared_frame_pages, 0);
    assert.equal(child.pages, 0);
    assert.equal(child.skipped.shared_frame_pages, present);
    assert.equal(child.skipped.zero_page_mappings, L.readonly);
  } finally {
    await f.stop();
  }
});

test('a vanished pid is reported per source and the scan goes on', { skip }, async () => {
  const f = await startFixture({ zero: 1, same: 0, distinct: 0, copies: 0, random: 0, readonly: 0, seed: 1 });
  try {
    const { code, report } = runAnalyze(['--pid', '2147483000', '--pid', String(f.pid), '--json', '--zstd-levels', '']);
    assert.equal(code, 0);
    assert.ok(report);
    const gone = report.sources.find((s) => s.pid === 2147483000);
    assert.equal(gone?.status, 'error');
    assert.equal(gone?.error?.code, 'ESRCH');
    assert.equal(source(report, f.pid).status, 'ok');
    assert.equal(report.totals.sources_failed, 1);
    assert.ok(report.totals.zero_pages >= 1);
    // every source failing is exit code 1
    assert.equal(runAnalyze(['--pid', '2147483000', '--json']).code, 1);
  } finally {
    await f.stop();
  }
});

test('--cgroup scans the processes of a cgroup and of its descendants', { skip }, async (t) => {
  const { existsSync, mkdirSync, rmdirSync, writeFileSync } = await import('node:fs');
  // cgroup v2 (unified at /sys/fs/cgroup or /sys/fs/cgroup/unified) or the v1 pids hierarchy
  const bases = ['/sys/fs/cgroup/pids', '/sys/fs/cgroup/unified', '/sys/fs/cgroup'].filter((b) => existsSync(`${b}/cgroup.procs`));
  const name = `zdedup-analyze-test-${process.pid}`;
  let base: string | undefined;
  for (const b of bases) {
    try { mkdirSync(`${b}/${name}/inner`, { recursive: true }); base = b; break; } catch { /* read-only or not delegated */ }
  }
  if (!base) { t.skip('no writable cgroup hierarchy to create a test cgroup in'); return; }
  const f = await startFixture({ zero: 3, same: 0, distinct: 2, copies: 2, random: 0, readonly: 0, seed: 5 });
  try {
    writeFileSync(`${base}/${name}/inner/cgroup.procs`, String(f.pid));
    const rel = `${base.replace(/^\/sys\/fs\/cgroup\/?/, '')}/${name}`.replace(/^\//, '');
    const { code, report } = runAnalyze(['--cgroup', rel, '--json', '--zstd-levels', '']);
    assert.equal(code, 0);
    assert.ok(report);
    assert.deepEqual(report.sources.map((s) => s.pid), [f.pid]);
    assert.ok(report.totals.zero_pages >= 3);
    assert.ok(report.totals.duplicate_pages >= 2);
  } finally {
    await f.stop();
    try { rmdirSync(`${base}/${name}/inner`); rmdirSync(`${base}/${name}`); } catch { /* left for the system to clean */ }
  }
});
