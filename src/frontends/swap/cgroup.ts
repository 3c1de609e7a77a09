/**
 * Memory cgroups for swap-over-NBD: keep the server (and nbdfuse) out of swap, and confine a
 * workload so that it *must* swap.
 *
 * Why: a server that serves swap on its own machine must never have its own pages swapped out to
 * the device it serves. To swap them back in the kernel needs the server to run, and the server
 * needs those pages to run: the machine freezes (docs/SWAP.md). The kernel's PFMEMALLOC reserves
 * protect the kernel side of NBD only, not a userspace server.
 *
 * What each cgroup version gives us:
 *
 *   version  "deny swap"                          strength
 *   -------  -----------------------------------  -------------------------------------------------
 *   v2       memory.swap.max = 0                  hard: reclaim sees zero swap for the group and
 *                                                 never scans its anonymous pages
 *   v1       memory.swappiness = 0 (+ a limit)    soft: limit reclaim never swaps the group, but
 *                                                 global reclaim may still swap "to prevent OOM"
 *                                                 when page cache is exhausted (mm/vmscan.c
 *                                                 get_scan_count). Keep RAM headroom; on v1 prefer
 *                                                 no limit so the group is only reclaimed globally.
 *
 * Where groups are made:
 *   v2: under the cgroup2 mount root. A non-root v2 group that holds processes (ours) cannot hand
 *       controllers to children ("no internal processes"), the root can.
 *   v1: under the memory hierarchy's group of *this* process, so whatever limits or accounting the
 *       caller runs under still apply to what we start (use_hierarchy).
 *
 * Charges follow the process that faults a page in, and pages already charged stay where they were
 * when a process moves. So start a process *inside* its group (spawnInCgroup) rather than moving
 * it after it has allocated.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SwapError, sleep } from './system.js';

export type CgroupVersion = 1 | 2;

/** Where memory cgroups live on this machine. */
export interface MemoryCgroupHierarchy {
  version: CgroupVersion;
  /** Mount point of the hierarchy that has the memory controller. */
  mount: string;
  /** Directory under which new groups are created (see the file comment). */
  base: string;
}

export interface MemoryCgroupOptions {
  /** Hard memory limit in bytes (v1 memory.limit_in_bytes, v2 memory.max); omitted = no limit. */
  limitBytes?: number;
  /**
   * 'deny': the group's anonymous memory is not swapped (v2 memory.swap.max=0; v1 swappiness 0).
   * 'prefer': the group swaps readily (v2 memory.swap.max=max; v1 swappiness 100).
   */
  swap: 'deny' | 'prefer';
}

// ---------------------------------------------------------------------------------------------
// Detection
// ---------------------------------------------------------------------------------------------

/** Parses /proc/self/mountinfo; returns the cgroup mounts as [mountPoint, fstype, superOptions]. */
function cgroupMounts(): Array<[string, string, string]> {
  const out: Array<[string, string, string]> = [];
  let text: string;
  try {
    text = readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return out;
  }
  for (const line of text.split('\n')) {
    // "36 25 0:31 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory"
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const left = line.slice(0, sep).split(' ');
    const right = line.slice(sep + 3).split(' ');
    const fstype = right[0] ?? '';
    if (fstype !== 'cgroup' && fstype !== 'cgroup2') continue;
    const mountPoint = (left[4] ?? '').replace(/\\040/g, ' ');
    out.push([mountPoint, fstype, right[2] ?? '']);
  }
  return out;
}

/** This process's path inside the v1 hierarchy that carries `controller`, or null. */
function ownV1Path(controller: string): string | null {
  try {
    for (const line of readFileSync('/proc/self/cgroup', 'utf8').split('\n')) {
      const [, ctrls, path] = line.split(':', 3) as [string?, string?, string?];
      if (ctrls !== undefined && path !== undefined && ctrls.split(',').includes(controller)) return path;
    }
  } catch { /* no /proc */ }
  return null;
}

/**
 * Finds the hierarchy with the memory controller: cgroup v2 if memory is enabled there (a pure
 * or systemd-unified machine), else the v1 memory hierarchy. Null when neither exists.
 */
export function detectMemoryCgroup(): MemoryCgroupHierarchy | null {
  const mounts = cgroupMounts();
  for (const [mp, fstype] of mounts) {
    if (fstype !== 'cgroup2') continue;
    try {
      if (readFileSync(join(mp, 'cgroup.controllers'), 'utf8').split(/\s+/).includes('memory')) {
        return { version: 2, mount: mp, base: mp };
      }
    } catch { /* unreadable */ }
  }
  for (const [mp, fstype, opts] of mounts) {
    if (fstype !== 'cgroup' || !opts.split(',').includes('memory')) continue;
    const own = ownV1Path('memory');
    const base = own !== null && existsSync(join(mp, own)) ? join(mp, own) : mp;
    return { version: 1, mount: mp, base };
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// A memory cgroup
// ---------------------------------------------------------------------------------------------

export class MemoryCgroup {
  constructor(readonly version: CgroupVersion, readonly path: string) {}

  /** Opens an existing group directory; the version is read from the files it has. */
  static open(path: string): MemoryCgroup {
    if (existsSync(join(path, 'memory.max'))) return new MemoryCgroup(2, path);
    if (existsSync(join(path, 'memory.limit_in_bytes'))) return new MemoryCgroup(1, path);
    throw new SwapError('ERR_CGROUP', `${path} is not a memory cgroup`);
  }

  get procsFile(): string { return join(this.path, 'cgroup.procs'); }

  private write(file: string, value: string): void {
    try {
      writeFileSync(join(this.path, file), value);
    } catch (e) {
      throw new SwapError('ERR_CGROUP', `cannot write "${value}" to ${join(this.path, file)}: ${(e as Error).message}`, { cause: e });
    }
  }

  read(file: string): string {
    return readFileSync(join(this.path, file), 'utf8').trim();
  }

  /** Applies a limit and the swap policy (see MemoryCgroupOptions). */
  configure(opts: MemoryCgroupOptions): void {
    if (this.version === 2) {
      if (opts.limitBytes !== undefined) this.write('memory.max', String(opts.limitBytes));
      // memory.swap.max exists only when the kernel accounts swap (CONFIG_MEMCG_SWAP, swapaccount)
      if (existsSync(join(this.path, 'memory.swap.max'))) {
        this.write('memory.swap.max', opts.swap === 'deny' ? '0' : 'max');
      } else if (opts.swap === 'deny') {
        throw new SwapError('ERR_CGROUP', `${this.path} has no memory.swap.max: the kernel does not account swap (boot with swapaccount=1)`);
      }
    } else {
      if (opts.limitBytes !== undefined) this.write('memory.limit_in_bytes', String(opts.limitBytes));
      this.write('memory.swappiness', opts.swap === 'deny' ? '0' : '100');
    }
  }

  /** Moves a process (all its threads) into the group. */
  addPid(pid: number): void { this.write('cgroup.procs', String(pid)); }

  pids(): number[] {
    try {
      return this.read('cgroup.procs').split('\n').filter((s) => s !== '').map(Number);
    } catch {
      return [];
    }
  }

  /** Bytes of this group's memory currently in swap, or null when the kernel does not say. */
  swapBytes(): number | null {
    try {
      if (this.version === 2) return Number(this.read('memory.swap.current'));
      // v1: memsw counts memory + swap
      return Number(this.read('memory.memsw.usage_in_bytes')) - Number(this.read('memory.usage_in_bytes'));
    } catch {
      return null;
    }
  }

  /** Event counters: v2 memory.events (oom, oom_kill, max...), v1 memory.oom_control (oom_kill...). */
  memoryEvents(): Record<string, number> {
    const out: Record<string, number> = {};
    try {
      const file = this.version === 2 ? 'memory.events' : 'memory.oom_control';
      for (const line of this.read(file).split('\n')) {
        const [k, v] = line.split(/\s+/);
        if (k !== undefined && v !== undefined && /^\d+$/.test(v)) out[k] = Number(v);
      }
    } catch { /* not there */ }
    return out;
  }

  /** SIGKILLs every process in the group and waits (bounded) until they are gone. */
  async killAll(): Promise<void> {
    for (let round = 0; round < 100; round++) {
      const pids = this.pids();
      if (pids.length === 0) return;
      for (const pid of pids) {
        try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
      }
      await sleep(20);
    }
  }

  /**
   * Removes the group. The caller must have ended or moved its processes first (killAll);
   * a group that is already gone is fine.
   */
  async remove(): Promise<void> {
    for (let round = 0; round < 100; round++) {
      try {
        rmdirSync(this.path);
        return;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') return;
        if (code !== 'EBUSY') throw new SwapError('ERR_CGROUP', `cannot remove ${this.path}: ${(e as Error).message}`, { cause: e });
        await sleep(20); // exiting tasks leave the group asynchronously
      }
    }
    throw new SwapError('ERR_CGROUP', `cannot remove ${this.path}: still busy (pids ${this.pids().join(',') || 'none'})`);
  }
}

/**
 * Creates (or reuses) the group `name` under the hierarchy's base and configures it. Throws
 * ERR_CGROUP when there is no memory controller or the kernel refuses a setting.
 */
export function createMemoryCgroup(name: string, opts: MemoryCgroupOptions, hierarchy = detectMemoryCgroup()): MemoryCgroup {
  if (hierarchy === null) throw new SwapError('ERR_CGROUP', 'no memory cgroup controller is mounted (neither cgroup v2 with memory nor v1 memory)');
  if (!/^[A-Za-z0-9_.@-]+$/.test(name)) throw new SwapError('ERR_INVALID_ARGUMENT', `invalid cgroup name "${name}"`);
  if (hierarchy.version === 2) {
    // the root must hand the memory controller down before a child has memory.* files
    const ctl = join(hierarchy.base, 'cgroup.subtree_control');
    if (!readFileSync(ctl, 'utf8').split(/\s+/).includes('memory')) {
      try { writeFileSync(ctl, '+memory'); } catch (e) {
        throw new SwapError('ERR_CGROUP', `cannot enable the memory controller in ${ctl}: ${(e as Error).message}`, { cause: e });
      }
    }
  }
  const path = join(hierarchy.base, name);
  try {
    mkdirSync(path, { recursive: false });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') {
      throw new SwapError('ERR_CGROUP', `cannot create ${path}: ${(e as Error).message}`, { cause: e });
    }
  }
  const cg = new MemoryCgroup(hierarchy.version, path);
  cg.configure(opts);
  return cg;
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/**
 * Spawns `cmd args` already inside `cg`: a /bin/sh wrapper writes its own pid to cgroup.procs and
 * then execs the command, so every page the command ever touches is charged to the group.
 */
export function spawnInCgroup(cg: MemoryCgroup, cmd: string, args: readonly string[], opts: SpawnOptions = {}): ChildProcess {
  return spawn('/bin/sh', ['-c', 'echo $$ > "$1" && shift && exec "$@"', 'sh', cg.procsFile, cmd, ...args], opts);
}

/**
 * Asks the OOM killer to pick anything but `pid` (-1000 = never), as `nbd-client -swap` does.
 * Lowering the score needs CAP_SYS_RESOURCE, which a container's root may lack: then this returns
 * the reason instead of throwing (the cgroup is the real protection against swap; this only
 * protects against the OOM killer).
 */
export function protectFromOomKiller(pid: number): string | null {
  try {
    writeFileSync(`/proc/${pid}/oom_score_adj`, '-1000');
    return null;
  } catch (e) {
    return `cannot set oom_score_adj of pid ${pid} to -1000: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`;
  }
}

/**
 * For `zdedup serve` (or any process in the swap I/O path) that was not started by systemd with
 * MemorySwapMax=0: moves `pid` into a group whose memory is never swapped (creating it with no
 * limit) and protects it from the OOM killer. Call it at startup, before the pool grows: pages
 * charged before the move stay charged to the old group.
 */
export function confineNoSwap(pid: number, name = 'zdedup-noswap'): { cgroup: MemoryCgroup; oomNote: string | null } {
  const cgroup = createMemoryCgroup(name, { swap: 'deny' });
  cgroup.addPid(pid);
  return { cgroup, oomNote: protectFromOomKiller(pid) };
}
