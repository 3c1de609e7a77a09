/**
 * `zdedup analyze` when nothing could be analysed (issue 8 item 7): no report of zeroes, one line
 * per source on stderr in the CLI's error form, exit code 1. A run where some source worked still
 * reports (the failed one is listed in the report, not on stderr).
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { runAnalyze } from './fixtures.js';

/** A pid with no process: 999999 as in the issue, or the next free one (pid_max may be larger). */
function absentPid(): number {
  let pid = 999999;
  while (existsSync(`/proc/${pid}`)) pid++;
  return pid;
}

test('analyze --pid of a process that does not exist: one error line, no report, exit 1', () => {
  const pid = absentPid();
  for (const extra of [[], ['--json']]) {
    const r = runAnalyze(['--pid', String(pid), '--no-progress', ...extra]);
    assert.equal(r.code, 1, `exit code (${extra.join(' ')})`);
    assert.equal(r.stdout, '', 'no report on stdout');
    assert.equal(r.stderr, `zdedup: ESRCH: pid ${pid}: no such process\n`);
  }
});

test('every source failing: one line each; one source working: the report, exit 0', () => {
  const dir = mkdtempSync(join(tmpdir(), 'zdedup-analyze-errors-'));
  try {
    const pid = absentPid();
    const missing = join(dir, 'nope.img');
    const both = runAnalyze(['--pid', String(pid), '--file', missing, '--no-progress']);
    assert.equal(both.code, 1);
    assert.equal(both.stdout, '');
    const lines = both.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 2);
    assert.equal(lines[0], `zdedup: ESRCH: pid ${pid}: no such process`);
    assert.match(lines[1]!, new RegExp(`^zdedup: ENOENT: ${missing.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: `));
    const ok = join(dir, 'ok.img');
    writeFileSync(ok, Buffer.alloc(8192));
    const some = runAnalyze(['--pid', String(pid), '--file', ok, '--no-progress', '--json']);
    assert.equal(some.code, 0);
    assert.equal(some.stderr, '');
    assert.equal(some.report?.sources[0]?.error?.code, 'ESRCH');
    assert.equal(some.report?.sources[1]?.zero_pages, 2);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
