/**
 * `zdedup analyze`: what would dedup + compression save on this machine? Scans live processes'
 * resident anonymous pages and raw page files with the store's own codecs and same-filled
 * test, and prints a table, JSON (--json) and/or a self-contained HTML report (--html FILE).
 * Definitions and JSON fields: docs/ANALYZE.md.
 *
 * Exit codes: 0 when at least one source was analysed (sources that failed are listed in the
 * report and do not fail the run), 1 when every source failed, 2 on invalid options. When every
 * source failed there is no report (it would be all zeroes, which reads like a result): each
 * source's error is one line on stderr, "zdedup: CODE: message", as for any other error.
 */
import type { Command } from 'commander';
import { writeFileSync } from 'node:fs';
import { ZdedupError, parseSize } from '../../../core/errors.js';
import { analyze } from '../../../analyze/run.js';
import { renderText } from '../../../analyze/render-text.js';
import { renderHtml } from '../../../analyze/render-html.js';
import type { Ctx } from '../main.js';

function collect(v: string, prev: string[]): string[] { return [...prev, v]; }

function pidOf(v: string): number {
  if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > 2 ** 31) throw new ZdedupError('ERR_INVALID_ARGUMENT', `--pid: not a process id: "${v}"`);
  return Number(v);
}

export function registerAnalyze(program: Command, ctx: Ctx): void {
  program
    .command('analyze')
    .description('Measure what compression, same-filled handling and dedup would save on live processes or page files')
    .option('--pid <pid>', 'a process to scan (repeatable)', collect, [])
    .option('--all', 'every process on the machine (root needed to read other users\' processes)', false)
    .option('--cgroup <path>', 'the processes of a cgroup and its descendants, v1 or v2 (repeatable; relative to /sys/fs/cgroup)', collect, [])
    .option('--file <path>', 'a raw page file, block device or swap image (repeatable)', collect, [])
    .option('--page-size <bytes>', 'page size: a power of two, 4096..65536 (processes: the kernel\'s)', '4096')
    .option('--lz4', 'measure lz4 (default on; --no-lz4 to skip)', true)
    .option('--no-lz4', 'do not measure lz4')
    .option('--zstd-levels <list>', 'zstd levels to measure, comma separated ("" for none)', '1,3')
    .option('--index-memory <size>', 'upper bound of the distinct-content index (28 B per cell)', '256M')
    .option('--cold-codec <zstd:LEVEL|off>', 'project the cold tier (serve --codec lz4 --cold-codec ...): distinct pages lz4 shrinks, zstd-compressed in groups', 'zstd:9')
    .option('--cold-group <n>', 'pages per cold group, 1..64', '8')
    .option('--mappings', 'include a per-mapping breakdown of each process in --json/--html', false)
    .option('--top <n>', 'most repeated contents to report', '16')
    .option('--json', 'print the report as JSON on stdout instead of the table', false)
    .option('--html <file>', 'also write a self-contained HTML report with charts')
    .option('--no-progress', 'no progress bar (it is drawn on stderr only when that is a terminal)')
    .addHelpText('after', '\nExamples:\n  sudo zdedup analyze --all\n  sudo zdedup analyze --pid 1234 --pid 5678 --json\n  zdedup analyze --file swap.img --zstd-levels 1,3,9 --html report.html\n\nDefinitions and JSON fields: docs/ANALYZE.md')
    .action((opts: {
      pid: string[]; all: boolean; cgroup: string[]; file: string[]; pageSize: string; lz4: boolean; zstdLevels: string;
      indexMemory: string; mappings: boolean; top: string; json: boolean; html?: string; progress: boolean;
      coldCodec: string; coldGroup: string;
    }) => {
      const codecs: string[] = [];
      if (opts.lz4) codecs.push('lz4');
      for (const l of opts.zstdLevels.split(',').map((s) => s.trim()).filter(Boolean)) {
        if (!/^-?\d+$/.test(l)) throw new ZdedupError('ERR_INVALID_ARGUMENT', `--zstd-levels: not a level: "${l}"`);
        codecs.push(`zstd:${l}`);
      }
      if (codecs.length === 0) throw new ZdedupError('ERR_INVALID_ARGUMENT', 'no codec to measure: keep lz4 or give --zstd-levels');
      const top = Number(opts.top);
      if (!Number.isSafeInteger(top) || top < 1 || top > 1000) throw new ZdedupError('ERR_INVALID_ARGUMENT', `--top must be 1..1000, got "${opts.top}"`);
      const report = analyze({
        pids: opts.pid.map(pidOf), all: opts.all, cgroups: opts.cgroup, files: opts.file,
        pageSize: parseSize(opts.pageSize), codecs, indexBytes: parseSize(opts.indexMemory),
        perMapping: opts.mappings, topContents: top, progress: opts.progress && !opts.json,
        coldCodec: opts.coldCodec === 'off' ? null : opts.coldCodec, coldGroup: Number(opts.coldGroup),
      });
      if (report.sources.length > 0 && report.sources.every((s) => s.status === 'error')) {
        for (const s of report.sources) process.stderr.write(`zdedup: ${s.error?.code ?? 'EIO'}: ${s.error?.message ?? `${s.name}: failed`}\n`);
        ctx.exitCode = 1;
        return;
      }
      if (opts.html) writeFileSync(opts.html, renderHtml(report));
      if (opts.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
      else process.stdout.write(renderText(report));
    });
}
