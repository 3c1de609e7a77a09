/**
 * analyze(): turns options into sources, scans them one after another with one Analyzer, and
 * builds the report. Sources that fail are reported with their error; the scan goes on.
 *
 * Source order is the order given: --pid values, then --cgroup members, then --all (ascending
 * pid), then --file paths; a pid named twice is scanned once. --all and --cgroup leave out
 * kernel threads (no user memory) and this process itself (its memory is the scan's own index).
 */
import { parseCodec } from '../engine/codec/codec.js';
import { DEFAULT_COLD_CODEC, parseColdOptions } from '../core/cold.js';
import { ZdedupError } from '../errors.js';
import { readFileSync } from 'node:fs';
import { Analyzer, S } from './analyzer.js';
import { scanFile, sizeOf } from './file-source.js';
import { FrameSet, allPids, cgroupPids, isRoot, kernelPageSize, rssAnonBytes, scanProcess } from './proc.js';
import { Progress } from './progress.js';
import { buildReport, type Report, type SourceInfo } from './report.js';

export interface AnalyzeOptions {
  pids: number[];
  all: boolean;
  cgroups: string[];
  files: string[];
  /** Bytes per page (power of two, 4096..65536); process scans need the kernel's page size. */
  pageSize: number;
  /** Codec specs to measure, e.g. ['lz4', 'zstd:1', 'zstd:3']. */
  codecs: string[];
  /** Upper bound of the content index in bytes. */
  indexBytes: number;
  /** Per-mapping breakdown of each process. */
  perMapping: boolean;
  /** Most repeated contents to keep. */
  topContents: number;
  /** Draw a progress bar on stderr (only if it is a TTY). */
  progress: boolean;
  /** Project the cold tier: 'zstd:LEVEL' for the group frames, or null (off). Default zstd:9. */
  coldCodec?: string | null;
  /** Pages per cold group (default 8). */
  coldGroup?: number;
}

const PF_KTHREAD = 0x00200000;

function isKernelThread(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[6]) & PF_KTHREAD) !== 0;
  } catch { return false; }
}

export function analyze(o: AnalyzeOptions): Report {
  const P = o.pageSize;
  if (!Number.isSafeInteger(P) || P < 4096 || P > 65536 || (P & (P - 1)) !== 0) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', `--page-size must be a power of two from 4096 to 65536, got ${P}`);
  }
  const codecs = o.codecs.map((s) => parseCodec(s));
  if (codecs.some((c) => c.name === 'none')) throw new ZdedupError('ERR_BAD_CODEC', 'codec "none" measures nothing: pass lz4 or zstd levels');

  // Processes.
  const skipped = { kernel_threads: 0, self: 0 };
  const pids: number[] = [];
  const seen = new Set<number>();
  const add = (pid: number, implicit: boolean): void => {
    if (seen.has(pid)) return;
    seen.add(pid);
    if (implicit && pid === process.pid) { skipped.self++; return; }
    if (implicit && isKernelThread(pid)) { skipped.kernel_threads++; return; }
    pids.push(pid);
  };
  for (const p of o.pids) add(p, false);
  for (const cg of o.cgroups) {
    let list: number[];
    try { list = cgroupPids(cg); } catch (e) { throw new ZdedupError('ERR_INVALID_ARGUMENT', (e as Error).message); }
    for (const p of list) add(p, true);
  }
  if (o.all) for (const p of allPids()) add(p, true);
  if (pids.length + o.files.length === 0 && skipped.kernel_threads + skipped.self === 0) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', 'nothing to analyze: give --pid, --all, --cgroup or --file');
  }
  const kps = kernelPageSize();
  if (pids.length > 0 && P !== kps) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', `process memory comes in the kernel's ${kps}-byte pages: --page-size ${P} works only with --file`);
  }

  const root = isRoot();
  const coldCodec = o.coldCodec === undefined ? DEFAULT_COLD_CODEC : o.coldCodec;
  const cold = coldCodec !== null ? parseColdOptions({ codec: coldCodec, groupPages: o.coldGroup }) : null;
  const an = new Analyzer({ pageSize: P, codecs, indexBytes: o.indexBytes, topContents: o.topContents, cold });
  const frames = root && pids.length > 0 ? new FrameSet() : null;
  const estimate = pids.reduce((s, p) => s + rssAnonBytes(p), 0) + o.files.reduce((s, f) => s + sizeOf(f), 0);
  const nSources = pids.length + o.files.length;
  const bar = new Progress(o.progress ? estimate : 0, nSources);
  const sources: SourceInfo[] = [];
  let before = 0;
  const t0 = performance.now();

  try {
    for (const pid of pids) {
      const i = an.beginSource();
      const label = `pid ${pid}`;
      const r = scanProcess(an, pid, {
        perMapping: o.perMapping, frames,
        onProgress: o.progress ? (b) => bar.update(before + b, i, label) : undefined,
      });
      before += an.sourceStats[i]![S.PAGES]! * P;
      sources.push({
        kind: 'process', name: `${pid} ${r.comm || '(gone)'}`, pid, path: null, comm: r.comm, cmdline: r.cmdline,
        status: r.status, error: r.error,
        ...(o.perMapping ? { mappingStats: r.mappings } : {}),
      });
    }
    for (const path of o.files) {
      const i = an.beginSource();
      const r = scanFile(an, path, o.progress ? (b) => bar.update(before + b, i, path) : undefined);
      before += an.sourceStats[i]![S.PAGES]! * P;
      sources.push({ kind: r.kind, name: path, pid: null, path, comm: null, cmdline: null, status: r.status, error: r.error });
    }
  } finally {
    bar.done();
    frames?.close();
  }
  an.calibrate();
  return buildReport({
    analyzer: an, sources, indexBytes: o.indexBytes, root, kernelPageSize: kps,
    scanSeconds: (performance.now() - t0) / 1000, skippedSources: skipped,
  });
}
