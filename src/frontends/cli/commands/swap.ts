/**
 * `zdedup swap on|off|status`: attach a running server's export as swap (with discard, at high
 * priority), detach it, and show what it holds. The mechanics live in src/frontends/swap/; this
 * file only parses flags and prints. docs/SWAP.md explains why the server must never be swapped.
 */
import { Command, Option } from 'commander';
import type { Ctx } from '../main.js';
import { swapOff, swapOffState, swapOn } from '../../swap/attach.js';
import { DEFAULT_SOCKET, DEFAULT_STATE_DIR, listStates } from '../../swap/state.js';
import { DEFAULT_HTTP } from './serve.js';
import { swapStatus, type SwapStatusEntry } from '../../swap/status.js';
import { SwapError } from '../../swap/system.js';

interface CommonOpts { socket: string; export: string; stateDir: string }

/** Runs an action; a SwapError is printed as one line "zdedup: CODE: message" and exits 2. */
function guarded(ctx: Ctx, fn: (...a: any[]) => Promise<void>): (...a: any[]) => Promise<void> {
  return async (...a: any[]) => {
    try {
      await fn(...a);
    } catch (e) {
      if (!(e instanceof SwapError)) throw e;
      process.stderr.write(`zdedup: ${e.code}: ${e.message}\n`);
      ctx.exitCode = 2;
    }
  };
}

function gib(bytes: number | null): string {
  if (bytes === null) return '-';
  if (bytes >= 2 ** 30) return `${(bytes / 2 ** 30).toFixed(2)} GiB`;
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

function printStatus(entries: SwapStatusEntry[]): void {
  if (entries.length === 0) {
    process.stdout.write('no zdedup swap attached\n');
    return;
  }
  for (const e of entries) {
    if (e.device !== null || e.socket !== null) {
      process.stdout.write(
        `${e.device ?? '(no device)'}  ${e.active ? 'active' : 'NOT ACTIVE'}  via ${e.method}  ` +
        `socket ${e.socket} export "${e.export}"\n` +
        `  swap: used ${gib(e.used_bytes)} of ${gib(e.size_bytes)}, priority ${e.priority ?? '-'}\n`,
      );
    }
    if (e.stats !== null) {
      const s = e.stats;
      const n = (k: string): string => (s[k] === undefined ? '-' : String(s[k]));
      const r = (k: string): string => (s[k] === undefined ? '-' : `${s[k]!.toFixed(2)}x`);
      process.stdout.write(
        `  store (${e.http}): ${n('stored_pages')} pages stored, ${n('duplicate_pages')} duplicate, ` +
        `${n('same_filled_pages')} same-filled, ${n('unique_objects')} unique objects, pool ${gib(s['pool_total_size'] ?? null)}\n` +
        `  ratios: compression ${r('compression_ratio')}, dedup ${r('dedup_ratio')}, effective ${r('effective_ratio')}` +
        (e.ram_per_swapped_byte !== null ? `; RAM per swapped byte ${e.ram_per_swapped_byte.toFixed(3)}` : '') + '\n',
      );
    } else if (e.stats_error !== null) {
      process.stdout.write(`  store: unavailable (${e.stats_error})\n`);
    } else {
      process.stdout.write('  store: unknown (pass --http ADDR:PORT of the server)\n');
    }
  }
}

export function registerSwap(program: Command, ctx: Ctx): void {
  const swap = program
    .command('swap')
    .description(
      'attach a zdedup export as swap, detach it, show its use (root; see docs/SWAP.md)\n\n' +
      'Uses nbd-client where /dev/nbd* exists, else nbdfuse + a direct-I/O loop device.\n' +
      'Run the server where its own memory cannot be swapped (contrib/systemd/zdedup.service).',
    );
  const common = (c: Command): Command =>
    c
      .option('--socket <path>', 'server unix socket', DEFAULT_SOCKET)
      .option('--export <name>', 'export name ("" = the default export)', '')
      .addOption(new Option('--state-dir <dir>', 'where attach state is recorded').default(DEFAULT_STATE_DIR).env('ZDEDUP_RUN_DIR'));

  common(swap.command('on'))
    .description('attach the export as swap: mkswap + swapon --discard at high priority')
    .option('--http <addr:port>', 'server HTTP endpoint, remembered for `swap status`', DEFAULT_HTTP)
    .option('--priority <n>', 'swap priority, -1..32767 (higher is used first)', '32767')
    .addOption(new Option('--discard <policy>', 'swapon discard policy').choices(['both', 'once', 'pages']).default('both'))
    .addOption(new Option('--method <m>', 'how to get a block device').choices(['auto', 'nbd-client', 'nbdfuse']).default('auto'))
    .option('--cgroup <name|path>', 'start nbdfuse in this memory cgroup with swap denied (a name is created and removed by `swap off`)')
    .action(guarded(ctx, async (o: CommonOpts & { http?: string; priority: string; discard: 'both' | 'once' | 'pages'; method: 'auto' | 'nbd-client' | 'nbdfuse'; cgroup?: string }) => {
      if (!/^-?\d+$/.test(o.priority)) throw new SwapError('ERR_INVALID_ARGUMENT', `--priority must be an integer, got "${o.priority}"`);
      const s = await swapOn({
        socket: o.socket, export: o.export, http: o.http ?? DEFAULT_HTTP, priority: Number(o.priority),
        discard: o.discard, method: o.method, cgroup: o.cgroup ?? null, stateDir: o.stateDir,
      });
      process.stdout.write(`zdedup swap on ${s.device} (via ${s.method}, priority ${s.priority}, discard ${s.discard})\n`);
      for (const n of s.notes) process.stderr.write(`zdedup: warning: ${n}\n`);
    }));

  common(swap.command('off'))
    .description('swapoff and detach what `swap on` attached for this socket/export')
    .option('--all', 'detach every zdedup swap recorded in the state dir')
    .action(guarded(ctx, async (o: CommonOpts & { all?: boolean }) => {
      const results: Array<{ device: string | null; notes: string[] }> = [];
      if (o.all) {
        for (const s of listStates(o.stateDir)) results.push({ device: s.device, notes: await swapOffState(o.stateDir, s) });
      } else {
        const r = await swapOff({ socket: o.socket, export: o.export, stateDir: o.stateDir });
        results.push({ device: r.state.device, notes: r.notes });
      }
      for (const r of results) {
        process.stdout.write(`zdedup swap off ${r.device ?? '(no device)'}${r.notes.length > 0 ? ` (${r.notes.join('; ')})` : ''}\n`);
      }
    }));

  swap.command('status')
    .description('show attached devices, their swap use (/proc/swaps) and the store\'s ratios (/stats)')
    .option('--http <addr:port>', 'server HTTP endpoint (default: the one given to `swap on`)')
    .option('--json', 'print JSON')
    .addOption(new Option('--state-dir <dir>', 'where attach state is recorded').default(DEFAULT_STATE_DIR).env('ZDEDUP_RUN_DIR'))
    .action(guarded(ctx, async (o: { http?: string; json?: boolean; stateDir: string }) => {
      const entries = await swapStatus(o.stateDir, o.http ?? null);
      if (o.json) process.stdout.write(JSON.stringify(entries, null, 2) + '\n');
      else printStatus(entries);
    }));
}
