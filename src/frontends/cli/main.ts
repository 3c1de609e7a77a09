/**
 * zdedup command line. Each subcommand lives in commands/<name>.ts and registers itself here;
 * main() returns the process exit code. Errors with a stable `code` (ZdedupError) are printed
 * as one line "zdedup: CODE: message" and exit 2; so are commander's usage errors (unknown option
 * or command, missing or excess argument), as ERR_INVALID_ARGUMENT, instead of commander's own
 * "error: ..." lines. Anything else is a bug and prints a stack.
 */
import { Command, CommanderError } from 'commander';
import { readFileSync } from 'node:fs';
import { ZdedupError } from '../../core/errors.js';
import { registerBench } from './commands/bench.js';
import { registerFsck } from './commands/fsck.js';
import { registerServe } from './commands/serve.js';
import { registerStats } from './commands/stats.js';
import { registerSwap } from './commands/swap.js';
import { registerAnalyze } from './commands/analyze.js';

export function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

/** Set by a command's action: the exit code main() returns. */
export interface Ctx { exitCode: number }

export function buildProgram(ctx: Ctx): Command {
  const program = new Command();
  program
    .name('zdedup')
    .description(
      'A compressed, deduplicating page store for swap and disks, served over NBD.\n\n' +
      'Every distinct page content is kept once (fingerprint + byte comparison), compressed\n' +
      '(lz4 or zstd) in a zsmalloc-style allocator; pages of one repeated word cost no allocation.\n\n' +
      'Start here:\n' +
      '  zdedup serve                       serve a 1 GiB RAM export on /run/zdedup/zdedup.sock (root)\n' +
      '  zdedup analyze --all               what would dedup + compression save on this machine?\n' +
      '  zdedup bench --file pages.img      measure the store on a raw file of pages',
    )
    .version(version(), '-V, --version')
    .exitOverride()
    // Usage errors are printed by main() in the one-line form; help and version still print here.
    // Both settings are inherited by the subcommands registered below.
    .configureOutput({ outputError: () => {} })
    .allowExcessArguments(false);
  registerServe(program, ctx);
  registerStats(program, ctx);
  registerSwap(program, ctx);
  registerAnalyze(program, ctx);
  registerBench(program, ctx);
  registerFsck(program, ctx);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const ctx: Ctx = { exitCode: 0 };
  const program = buildProgram(ctx);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return ctx.exitCode;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.exitCode === 0) return 0; // --help, --version
      // 'commander.help': help printed because no command was given; anything else is a usage error.
      if (e.code !== 'commander.help') process.stderr.write(`zdedup: ERR_INVALID_ARGUMENT: ${usageMessage(e.message)} (run with --help for usage)\n`);
      return 2;
    }
    if (e instanceof ZdedupError) {
      process.stderr.write(`zdedup: ${e.code}: ${e.message}\n`);
      return 2;
    }
    process.stderr.write(`zdedup: internal error: ${(e as Error)?.stack ?? String(e)}\n`);
    return 1;
  }
}

/** Commander's message without its "error: " prefix (it is a sentence of its own otherwise). */
function usageMessage(m: string): string {
  return m.replace(/^error: /, '').replace(/\s+/g, ' ').trim();
}
