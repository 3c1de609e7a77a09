/**
 * Usage errors of the `zdedup` command line take the one-line form every other error has,
 * "zdedup: CODE: message" on stderr, exit code 2 (issue 8 item 7: commander printed its own
 * "error: ..." line and a hint on a second line). Help and version still print and exit 0.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const BIN = fileURLToPath(new URL('../../../bin/zdedup.js', import.meta.url));

function run(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 20_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const ONE_LINE = /^zdedup: ERR_INVALID_ARGUMENT: [^\n]+\n$/;

test('unknown options, unknown commands, missing and excess arguments: one line, exit 2', () => {
  const cases: Array<[string[], RegExp]> = [
    [['--bogus'], /unknown option '--bogus'/],
    [['serve', '--bogus'], /unknown option '--bogus'/],
    [['analyze', '--no-such-flag=1'], /unknown option '--no-such-flag=1'/],
    [['swap', 'status', '--bogus'], /unknown option '--bogus'/],
    [['frobnicate'], /unknown command 'frobnicate'/],
    [['analyze', '--pid'], /--pid <pid>' argument missing/],
    [['serve', 'extra'], /too many arguments for 'serve'/], // was ignored: serve started with defaults
  ];
  for (const [args, what] of cases) {
    const r = run(args);
    assert.equal(r.code, 2, `exit code of zdedup ${args.join(' ')}`);
    assert.match(r.stderr, ONE_LINE, `one line for zdedup ${args.join(' ')}`);
    assert.match(r.stderr, what);
    assert.equal(r.stdout, '');
  }
});

test('help and version are not errors', () => {
  const h = run(['serve', '--help']);
  assert.equal(h.code, 0);
  assert.match(h.stdout, /^Usage: zdedup serve/);
  assert.equal(h.stderr, '');
  const v = run(['--version']);
  assert.equal(v.code, 0);
  assert.match(v.stdout, /^\d+\.\d+\.\d+\n$/);
});
