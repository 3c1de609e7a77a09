/**
 * Process sources: the resident anonymous pages of live processes, i.e. what the kernel would
 * swap out.
 *
 *   /proc/PID/maps     which mappings to look at: every *private* mapping ('p'), except the
 *                      kernel's special ones ([vvar], [vdso], [vsyscall], ...) and device files
 *                      (/dev/..., except /dev/zero); anonymous, [heap], [stack] and the
 *                      copy-on-write copies inside private file mappings (.data, .bss, relro).
 *   /proc/PID/pagemap  one u64 per virtual page; a page is analysed when
 *                        bit 63 present        (swapped pages, bit 62, are counted, not read:
 *                                               reading them would swap them back in)
 *                        bit 61 clear          (not a file page or shared-anon/shmem page: an
 *                                               anonymous page on the anon LRU)
 *                      and its physical frame (bits 0..54, root only) is not already counted:
 *                      a frame mapped by several processes (fork copy-on-write not yet broken,
 *                      KSM) has bit 56 "exclusively mapped" clear; it is counted once, in the
 *                      first process scanned, and frames of the kernel's zero page (found with
 *                      /proc/kpageflags, KPF_ZERO_PAGE) are not memory and are skipped.
 *   /proc/PID/mem      the contents, read in runs of consecutive wanted pages, up to one batch
 *                      (1 MiB) per read.
 *
 * Without CAP_SYS_ADMIN the kernel reports PFN 0, so frames cannot be told apart: fork-shared
 * pages then count once per process (and show up as cross-process duplicates). Without
 * ptrace access (root or CAP_SYS_PTRACE for other users' processes) /proc/PID/mem cannot be
 * opened: the source is reported with code EACCES and the scan goes on.
 *
 * A process may exit or unmap memory while it is read: a failed run is retried page by page,
 * pages that still fail count as READ_ERROR, and a process that is gone ends its source as
 * "partial". Pages are read at slightly different moments, so the snapshot is not atomic.
 */
import { closeSync, existsSync, openSync, readFileSync, readSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Analyzer, S } from './analyzer.js';

export interface SourceError { code: string; message: string }

export interface Mapping {
  start: number;
  end: number;
  perms: string;
  name: string;
  stats: Float64Array | null;
}

export interface ProcessScan {
  status: 'ok' | 'partial' | 'error';
  error: SourceError | null;
  comm: string;
  cmdline: string;
  /** Mappings looked at, with their stats when a per-mapping breakdown was asked for. */
  mappings: Mapping[];
}

const SPECIAL = /^\[(vvar|vvar_vclock|vdso|vsyscall|uprobes|vectors|sigpage)\]$/;
const KPF_ZERO_PAGE = 24;

/**
 * Physical frames already counted, as a growable bitmap (1 bit per PFN), and a second bitmap of
 * frames known to be the kernel's zero page (the 4 KiB one, and each subpage of the huge one).
 */
export class FrameSet {
  private bits = new Uint8Array(1 << 16);
  private zero = new Uint8Array(1 << 16);
  private kpf = -1;
  private readonly flag = new Uint8Array(8);
  constructor() {
    try { this.kpf = openSync('/proc/kpageflags', 'r'); } catch { this.kpf = -1; }
  }

  /**
   * Classifies a frame that is not exclusively mapped: ZERO_PAGE_MAPPING, SHARED_FRAME (already
   * counted), or -1 (first time: count it). The kernel zero page is recognised by KPF_ZERO_PAGE
   * in /proc/kpageflags, read once per frame.
   */
  classify(pfn: number): number {
    const byte = Math.floor(pfn / 8), bit = 1 << (pfn & 7);
    if (byte >= this.bits.length) this.grow(byte);
    if (this.zero[byte]! & bit) return S.ZERO_PAGE_MAPPING;
    if (this.bits[byte]! & bit) return S.SHARED_FRAME;
    this.bits[byte]! |= bit;
    if (this.isZeroPage(pfn)) { this.zero[byte]! |= bit; return S.ZERO_PAGE_MAPPING; }
    return -1;
  }

  private grow(byte: number): void {
    let n = this.bits.length;
    while (n <= byte) n *= 2;
    const b = new Uint8Array(n), z = new Uint8Array(n);
    b.set(this.bits); z.set(this.zero);
    this.bits = b; this.zero = z;
  }

  private isZeroPage(pfn: number): boolean {
    if (this.kpf < 0) return false;
    try {
      if (readSync(this.kpf, this.flag, 0, 8, pfn * 8) !== 8) return false;
    } catch { return false; }
    return (this.flag[KPF_ZERO_PAGE >> 3]! & (1 << (KPF_ZERO_PAGE & 7))) !== 0;
  }

  close(): void { if (this.kpf >= 0) closeSync(this.kpf); this.kpf = -1; }
}

/** Parses /proc/PID/maps text into the mappings to scan (user addresses only). */
export function parseMaps(text: string): Mapping[] {
  const out: Mapping[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const m = /^([0-9a-f]+)-([0-9a-f]+)\s+(\S{4})\s+\S+\s+\S+\s+\d+\s*(.*)$/.exec(line);
    if (!m) continue;
    const perms = m[3]!;
    const name = m[4]!.trim();
    if (perms[3] !== 'p') continue;                       // shared: shmem/file pages, not anon
    if (SPECIAL.test(name)) continue;
    if (name.startsWith('/dev/') && !name.startsWith('/dev/zero')) continue; // device memory
    if (m[1]!.length > 13 || m[2]!.length > 13) continue;  // beyond 2^52: kernel addresses
    out.push({ start: parseInt(m[1]!, 16), end: parseInt(m[2]!, 16), perms, name, stats: null });
  }
  return out;
}

function errorOf(e: unknown, what: string): SourceError {
  const code = (e as NodeJS.ErrnoException)?.code ?? 'EIO';
  if (code === 'ENOENT' || code === 'ESRCH') return { code: 'ESRCH', message: `process vanished (${what})` };
  if (code === 'EACCES' || code === 'EPERM') {
    return {
      code: 'EACCES',
      message: isRoot()
        ? `permission denied reading ${what}, even as root (another user namespace, or an LSM/Yama policy)`
        : `permission denied reading ${what}: run as root (or with CAP_SYS_PTRACE and CAP_SYS_ADMIN)`,
    };
  }
  return { code, message: `${what}: ${(e as Error)?.message ?? String(e)}` };
}

function readText(path: string): string {
  try { return readFileSync(path, 'utf8'); } catch { return ''; }
}

/** Process name and command line (best effort; empty when gone). */
export function processName(pid: number): { comm: string; cmdline: string } {
  const comm = readText(`/proc/${pid}/comm`).trim();
  const cmdline = readText(`/proc/${pid}/cmdline`).replace(/\0+$/, '').replace(/\0/g, ' ').slice(0, 200);
  return { comm, cmdline };
}

/** Every process (thread-group leader) in /proc, ascending. */
export function allPids(): number[] {
  const pids: number[] = [];
  for (const e of readdirSync('/proc')) if (/^\d+$/.test(e)) pids.push(Number(e));
  return pids.sort((a, b) => a - b);
}

/** Processes of a cgroup (v1 or v2) and its descendants, from cgroup.procs. */
export function cgroupPids(path: string): number[] {
  let dir = path;
  if (!dir.startsWith('/') || (!existsSync(dir) && existsSync(join('/sys/fs/cgroup', dir)))) dir = join('/sys/fs/cgroup', dir);
  if (!existsSync(join(dir, 'cgroup.procs'))) {
    throw Object.assign(new Error(`${path}: not a cgroup directory (no cgroup.procs in ${dir})`), { code: 'ENOENT' });
  }
  const pids = new Set<number>();
  const walk = (d: string): void => {
    for (const l of readText(join(d, 'cgroup.procs')).split('\n')) if (/^\d+$/.test(l)) pids.add(Number(l));
    for (const e of readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) walk(join(d, e.name));
  };
  walk(dir);
  return [...pids].sort((a, b) => a - b);
}

/** Anonymous resident memory of a process in bytes (RssAnon), for progress estimates; 0 if unknown. */
export function rssAnonBytes(pid: number): number {
  const m = /RssAnon:\s+(\d+)\s+kB/.exec(readText(`/proc/${pid}/status`));
  return m ? Number(m[1]) * 1024 : 0;
}

export interface ProcessScanOptions {
  /** Keep stats per mapping (Mapping.stats). */
  perMapping: boolean;
  /** Frames already counted; null to count every mapping of a frame (non-root). */
  frames: FrameSet | null;
  /** Called after each batch with the bytes analysed so far in this source. */
  onProgress?: (bytes: number) => void;
}

const PAGEMAP_CHUNK = 8192; // entries per pagemap read (64 KiB)

/**
 * Scans one process into the analyzer's current source. The process page size must equal the
 * analyzer's page size (checked by the caller).
 */
export function scanProcess(an: Analyzer, pid: number, o: ProcessScanOptions): ProcessScan {
  const { comm, cmdline } = processName(pid);
  const res: ProcessScan = { status: 'ok', error: null, comm, cmdline, mappings: [] };
  let maps: string;
  let memFd = -1, pmFd = -1;
  try {
    maps = readFileSync(`/proc/${pid}/maps`, 'utf8');
    pmFd = openSync(`/proc/${pid}/pagemap`, 'r');
    memFd = openSync(`/proc/${pid}/mem`, 'r');
  } catch (e) {
    if (pmFd >= 0) closeSync(pmFd);
    res.status = 'error';
    const code = (e as NodeJS.ErrnoException)?.code;
    // Gone before the scan began (or never there): say so plainly; "vanished" is for a process
    // that exits while it is being scanned.
    res.error = code === 'ENOENT' || code === 'ESRCH' ? { code: 'ESRCH', message: `pid ${pid}: no such process` } : errorOf(e, `/proc/${pid}`);
    return res;
  }
  try {
    res.mappings = parseMaps(maps);
    scanMappings(an, pid, memFd, pmFd, res, o);
  } finally {
    closeSync(memFd);
    closeSync(pmFd);
  }
  return res;
}

function scanMappings(an: Analyzer, pid: number, memFd: number, pmFd: number, res: ProcessScan, o: ProcessScanOptions): void {
  const P = an.pageSize;
  const pm = new Uint8Array(PAGEMAP_CHUNK * 8);
  const pm32 = new Uint32Array(pm.buffer);
  const wanted = new Uint8Array(PAGEMAP_CHUNK);
  const batch = an.batch, cap = an.batchPages;
  const frames = o.frames;
  let fill = 0, done = 0;
  let gone = false;

  const flush = (): void => {
    if (fill === 0) return;
    an.processBatch(fill);
    done += fill * P;
    fill = 0;
    o.onProgress?.(done);
  };

  // Reads pages [addr, addr + n*P) into the batch (n <= free batch room). Returns pages read.
  const readRun = (addr: number, n: number): void => {
    let got = 0;
    try { got = readSync(memFd, batch, fill * P, n * P, addr); } catch { got = -1; }
    if (got === n * P) { fill += n; return; }
    // Short or failed read: retry page by page.
    for (let j = 0; j < n; j++) {
      let r = 0;
      try { r = readSync(memFd, batch, fill * P, P, addr + j * P); } catch { r = -1; }
      if (r === P) fill++;
      else {
        an.count(S.READ_ERROR, 1);
        if (r === 0 && !existsSync(`/proc/${pid}`)) { gone = true; an.count(S.READ_ERROR, n - j - 1); return; }
      }
    }
  };

  for (const m of res.mappings) {
    if (gone) break;
    if (o.perMapping) { flush(); m.stats = an.newStats(); an.setMapping(m.stats); }
    for (let va = m.start; va < m.end && !gone;) {
      const entries = Math.min(PAGEMAP_CHUNK, (m.end - va) / P);
      let got: number;
      try { got = readSync(pmFd, pm, 0, entries * 8, (va / P) * 8); } catch (e) {
        got = 0;
        if (!existsSync(`/proc/${pid}`)) gone = true;
        else { res.status = 'partial'; res.error = errorOf(e, `/proc/${pid}/pagemap`); }
      }
      const n = Math.floor(got / 8);
      if (n === 0) break;
      for (let j = 0; j < n; j++) {
        wanted[j] = 0;
        const lo = pm32[2 * j]!, hi = pm32[2 * j + 1]!;
        if ((hi & 0x80000000) === 0) {                  // not present
          if (hi & 0x40000000) an.count(S.SWAPPED, 1);
          continue;
        }
        if (hi & 0x20000000) { an.count(S.NOT_ANON, 1); continue; }
        if (frames !== null && (hi & 0x01000000) === 0) {  // not exclusively mapped
          const pfn = lo + (hi & 0x7fffff) * 4294967296;
          if (pfn !== 0) {
            const skip = frames.classify(pfn);
            if (skip >= 0) { an.count(skip, 1); continue; }
          }
        }
        wanted[j] = 1;
      }
      // Runs of wanted pages, each read with as few preads as the batch room allows.
      for (let j = 0; j < n && !gone;) {
        if (!wanted[j]) { j++; continue; }
        let e = j + 1;
        while (e < n && wanted[e]) e++;
        while (j < e && !gone) {
          const take = Math.min(e - j, cap - fill);
          readRun(va + j * P, take);
          j += take;
          if (fill === cap) flush();
        }
        j = e;
      }
      va += n * P;
    }
    if (o.perMapping) { flush(); an.setMapping(null); }
  }
  flush();
  if (gone) {
    res.status = 'partial';
    res.error = { code: 'ESRCH', message: 'process exited during the scan' };
  }
}

/** The kernel's page size (the unit of pagemap); 4096 unless the system says otherwise. */
export function kernelPageSize(): number {
  const m = /KernelPageSize:\s+(\d+)\s+kB/.exec(readText('/proc/self/smaps'));
  return m ? Number(m[1]) * 1024 : 4096;
}

export function isRoot(): boolean { return typeof process.getuid === 'function' && process.getuid() === 0; }

export function pidExists(pid: number): boolean {
  try { statSync(`/proc/${pid}`); return true; } catch { return false; }
}
