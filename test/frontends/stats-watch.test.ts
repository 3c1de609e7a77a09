/**
 * `zdedup stats --watch` in a real terminal (tmux, on a private tmux server): against a real
 * `zdedup serve` it draws one screen, redraws it in place as nbdcopy writes (the numbers follow
 * /stats and the header is never repeated), and q or Ctrl-C restore the terminal and exit 0.
 * The screen itself is also rendered without a terminal (formatWatch), and bad --watch values
 * exit 2.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { formatWatch, type Reading } from '../../src/frontends/cli/commands/stats.js';
import { ZDEDUP, hasTool, httpGet, run, runOk, startServer, type Server } from '../integration/nbd/harness.js';

const tmuxSkip = !hasTool('tmux') ? 'needs tmux (apt-get install tmux)' : !hasTool('nbdcopy') ? 'needs nbdcopy (apt-get install libnbd-bin)' : false;

/** A private tmux server running one command in a 120x40 window. */
class Terminal {
  readonly sock = `zdedup-watch-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  constructor(command: string) {
    this.tmux('new-session', '-d', '-s', 'w', '-x', '120', '-y', '40', command);
  }
  tmux(...args: string[]): string {
    const r = spawnSync('tmux', ['-L', this.sock, ...args], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`tmux ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  }
  screen(): string {
    return this.tmux('capture-pane', '-p', '-t', 'w');
  }
  /** Waits until the screen satisfies `ok` (polling; fails with the last screen after `ms`). */
  async until(ok: (screen: string) => boolean, what: string, ms = 20_000): Promise<string> {
    let s = '';
    for (const end = Date.now() + ms; Date.now() < end;) {
      s = this.screen();
      if (ok(s)) return s;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`terminal never showed ${what}; last screen:\n${s}`);
  }
  kill(): void {
    spawnSync('tmux', ['-L', this.sock, 'kill-server']);
  }
}

const shownStored = (screen: string): number | null => {
  const m = /^pages +stored ([\d,]+)/m.exec(screen);
  return m ? Number(m[1]!.replace(/,/g, '')) : null;
};

describe('zdedup stats --watch', () => {
  for (const [key, name] of [['q', 'q'], ['C-c', 'Ctrl-C']] as const) {
    test(`redraws in place as NBD writes land, and ${name} exits 0 with the terminal restored`, { skip: tmuxSkip, timeout: 120_000 }, async () => {
      const server: Server = await startServer(['--size', '64M']);
      const dir = mkdtempSync(join(tmpdir(), 'zdedup-watch-'));
      const term = new Terminal(`sh -c 'echo before-watch; ${process.execPath} ${ZDEDUP} stats --watch 0.2 --http ${server.http!}; echo "exited $?"; sleep 60'`);
      try {
        let screen = await term.until((s) => shownStored(s) === 0, 'the first reading');
        assert.doesNotMatch(screen, /before-watch/, 'the view is on the alternate screen');
        for (const [i, pages] of [[1, 300], [2, 900]] as const) {
          const img = join(dir, `${i}.img`);
          writeFileSync(img, Buffer.concat([randomBytes(pages * 2048), Buffer.alloc(pages * 2048, 7)]));
          await runOk('nbdcopy', [img, server.uri()]);
          const want = (JSON.parse(await httpGet(server.http!, '/stats')) as { store: { stored_pages: number } }).store.stored_pages;
          screen = await term.until((s) => shownStored(s) === want, `stored ${want} (as /stats says)`);
          assert.equal(screen.match(/q to quit/g)?.length, 1, 'one header: redrawn in place, not scrolled');
          assert.match(screen, /^ratios +effective [\d.]+ +compression [\d.]+ +dedup [\d.]+/m);
          assert.match(screen, /^exports +name/m);
        }
        term.tmux('send-keys', '-t', 'w', key);
        screen = await term.until((s) => /exited \d+/.test(s), 'the exit');
        assert.match(screen, /exited 0/);
        assert.match(screen, /before-watch/, 'the normal screen is back');
        assert.doesNotMatch(screen, /q to quit/, 'the live view is gone with its screen');
      } finally {
        term.kill();
        await server.stop();
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }

  test('bad --watch values exit 2 with one line', async () => {
    for (const args of [['--watch', '0'], ['--watch', 'soon'], ['--watch', '--json']]) {
      const r = await run(process.execPath, [ZDEDUP, 'stats', '--http', '127.0.0.1:1', ...args]);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /^zdedup: ERR_INVALID_ARGUMENT: /);
    }
  });

  test('formatWatch: rates and latency between two readings; tier lines only when reported', () => {
    const doc = (t: number, o: { stored: number; calls: number; written: number; lat: number[]; disk?: boolean }): Reading => ({
      at: t,
      doc: {
        version: '1', pid: 2, uptime_seconds: 3,
        store: {
          stored_pages: o.stored, same_filled_pages: 10, zero_pages: 4, duplicate_pages: 6, store_calls: o.calls,
          effective_ratio: 3.5, compression_ratio: 2, dedup_ratio: 1.25, pool_total_size: 1 << 20, max_pool_bytes: 4 << 20,
          logical_bytes: o.stored * 4096, metadata_bytes: 1000, decompress_fail: 1,
          ...(o.disk ? { disk_bytes: 2 << 20, disk_live_bytes: 1 << 20, backing_size: 1 << 30, disk_segments: 2, written_back_pages: o.calls } : {}),
        },
        exports: [{ name: 'swap', size: 1 << 30, read_only: false, pages: 262144, data_pages: 5, zero_pages: 4, hole_pages: 1 }],
        nbd: {
          bytes_written: o.written, requests_total: o.calls, requests: { write: o.calls }, errors: { ENOSPC: 2 },
          latency: { write: { buckets: [0.001, 0.01], counts: o.lat, sum_seconds: 0, count: o.lat.reduce((a, b) => a + b, 0) } },
        },
      },
    });
    const a = doc(1000, { stored: 100, calls: 100, written: 0, lat: [100, 0, 0] });
    const b = doc(3000, { stored: 200, calls: 300, written: 2 * 1048576, lat: [100, 200, 0] });
    const text = formatWatch(b, a, { url: 'http://x/stats', seconds: 2, problem: null, width: 100 }).join('\n');
    assert.match(text, /effective 3\.50 +compression 2\.00 +dedup 1\.25/);
    assert.match(text, /stored 200 +zero 4 +same-filled 6 +duplicate 6 +unique 184/);
    assert.match(text, /RAM pool 1\.00 MiB of 4\.00 MiB \(25\.0%\)/);
    assert.match(text, /write 1\.00 MiB\/s/, '2 MiB in 2 s');
    assert.match(text, /store 100\/s/, '200 calls in 2 s');
    assert.match(text, /^ +write +\d.+ms +\d.+ms +\d.+ms +100\/s$/m, 'latency of the 200 new writes, all in (1, 10 ms]');
    assert.match(text, /decompress_fail 1 \(0\/s\)/);
    assert.match(text, /nbd ENOSPC 2/);
    assert.doesNotMatch(text, /^tiers/m, 'no tier line without a tier');
    assert.ok(text.split('\n').every((l) => l.length <= 100), 'lines fit the width');
    const withDisk = formatWatch(doc(3000, { stored: 1, calls: 50, written: 0, lat: [1, 0, 0], disk: true }), doc(1000, { stored: 1, calls: 10, written: 0, lat: [1, 0, 0], disk: true }),
      { url: 'u', seconds: 1, problem: 'no answer from u (ECONNREFUSED); retrying', width: 100 }).join('\n');
    assert.match(withDisk, /^tiers +disk tier 2\.00 MiB +disk tier, live 1\.00 MiB +segments 2 +backing 1\.00 GiB/m);
    assert.match(withDisk, /written back pages 20\/s/);
    assert.match(withDisk, /^!! no answer from u/m);
    assert.match(formatWatch(null, null, { url: 'u', seconds: 1, problem: null, width: 80 }).join('\n'), /waiting for the first reading/);
  });
});
