/**
 * Attaching an NBD export as swap, and detaching it again.
 *
 * Two paths to a block device, chosen once per `swap on`:
 *
 *   nbd-client (kernel nbd.ko, /dev/nbd* exists)       nbdfuse + loop (no nbd.ko)
 *   -------------------------------------------       ---------------------------------------------
 *   nbd-client -unix SOCK [-N EXPORT] -b 4096 DEV      nbdfuse MNT/swap nbd+unix:///EXPORT?socket=SOCK
 *                                                      losetup --find --show --direct-io=on MNT/swap
 *   mkswap DEV; swapon --discard --priority P DEV      mkswap DEV; swapon --discard --priority P DEV
 *
 *   kernel -> /dev/nbdN -> socket -> server            kernel -> /dev/loopN -> FUSE -> nbdfuse
 *                                                        -> socket -> server
 *
 * Why these flags:
 * - no `nbd-client -t`: with a timeout the kernel marks a slow connection dead and fails the I/O;
 *   a failed swap-in kills the process that faulted. Without it the kernel only logs a warning.
 * - `-b 4096`: swap I/O is page-sized and page-aligned; a 4 KiB block size lets the server take
 *   every request as whole pages (no read-modify-write).
 * - `--direct-io=on`: a loop device over a buffered file caches every page it passes in the page
 *   cache of the backing file. Swap would then keep each swapped-out page a second time, in RAM,
 *   under the very memory pressure that made the kernel swap it out; and FUSE writeback of that
 *   cache is what nbdfuse's manual warns "may sometimes deadlock". With direct I/O each 4 KiB swap
 *   I/O becomes one 4 KiB NBD request and nothing is cached twice.
 * - `--discard`: swap sends TRIM for freed slots (and once for the whole area at swapon), and a
 *   TRIM is what lets a deduplicating RAM store free the page. Without it the store keeps every
 *   page ever swapped out until it is overwritten.
 * - high priority (default 32767, the maximum): swap to RAM-backed zdedup before any disk swap.
 *
 * Every step is recorded in the state file as it completes (state.ts); a failure undoes the steps
 * done so far, and `swap off` undoes exactly the recorded steps, checking before each that the
 * thing it is about to remove is still the one it created (a loop device still bound to our FUSE
 * file, a pid still running nbdfuse).
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmdirSync, rmSync, statSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { createMemoryCgroup, MemoryCgroup, protectFromOomKiller, spawnInCgroup } from './cgroup.js';
import { loadState, removeState, saveState, stateId, type AttachMethod, type SwapState } from './state.js';
import { readProcSwaps } from './status.js';
import { findTool, pidAlive, pidComm, pollUntil, requireRoot, requireTools, run, SwapError } from './system.js';

export interface SwapOnOptions {
  /** Server unix socket. */
  socket: string;
  /** Export name; "" is the server's default export. */
  export: string;
  /** Server HTTP endpoint ADDR:PORT, remembered for `status`. */
  http: string | null;
  /** swapon priority, -1..32767. */
  priority: number;
  /** swapon --discard policy: 'both' (once at swapon + freed pages), 'once' or 'pages'. */
  discard: 'both' | 'once' | 'pages';
  /** 'auto' picks nbd-client when /dev/nbd* exists, else nbdfuse. */
  method: 'auto' | AttachMethod;
  /**
   * A memory cgroup to start nbdfuse in, so that it cannot be swapped (it is in the swap I/O
   * path, like the server). A path to an existing group is used as is; a bare name is created
   * with swap denied and removed by `swap off`. null = leave nbdfuse where we run (right under
   * the systemd unit, which sets MemorySwapMax=0 itself).
   */
  cgroup: string | null;
  stateDir: string;
}

export interface SwapTarget { socket: string; export: string; stateDir: string }

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/** /dev/nbdN devices that exist and have no connection (no pid, size 0). */
function freeNbdDevices(): string[] {
  let names: string[];
  try {
    names = readdirSync('/sys/block').filter((n) => /^nbd\d+$/.test(n));
  } catch {
    return [];
  }
  return names
    .filter((n) => !existsSync(`/sys/block/${n}/pid`) && readFileSync(`/sys/block/${n}/size`, 'utf8').trim() === '0')
    .sort((a, b) => Number(a.slice(3)) - Number(b.slice(3)))
    .map((n) => `/dev/${n}`);
}

function chooseMethod(wanted: SwapOnOptions['method']): AttachMethod {
  const haveNbd = existsSync('/sys/block/nbd0') || existsSync('/dev/nbd0');
  const haveFuseLoop = existsSync('/dev/fuse') && existsSync('/dev/loop-control');
  if (wanted === 'nbd-client') {
    if (!haveNbd) throw new SwapError('ERR_NO_ATTACH_PATH', 'no /dev/nbd* devices (modprobe nbd, or use --method nbdfuse)');
    return 'nbd-client';
  }
  if (wanted === 'nbdfuse') {
    if (!haveFuseLoop) throw new SwapError('ERR_NO_ATTACH_PATH', 'nbdfuse needs /dev/fuse and /dev/loop-control (modprobe fuse loop)');
    return 'nbdfuse';
  }
  if (haveNbd) return 'nbd-client';
  if (haveFuseLoop) return 'nbdfuse';
  throw new SwapError('ERR_NO_ATTACH_PATH', 'neither /dev/nbd* (modprobe nbd) nor /dev/fuse + /dev/loop-control exist: cannot make a block device from an NBD export');
}

/** nbd+unix URI of an export; the export name is the URI path (RFC: percent-encoded). */
export function nbdUnixUri(socket: string, exportName: string): string {
  return `nbd+unix:///${encodeURIComponent(exportName)}?socket=${encodeURIComponent(socket)}`;
}

function isMounted(mountpoint: string): boolean {
  try {
    return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4]?.replace(/\\040/g, ' ') === mountpoint);
  } catch {
    return false;
  }
}

/** The file a loop device is bound to, or null if it is free or gone. */
function loopBackingFile(dev: string): string | null {
  try {
    return readFileSync(`/sys/block/${basename(dev)}/loop/backing_file`, 'utf8').trim();
  } catch {
    return null;
  }
}

function readLog(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim().split('\n').slice(-5).join(' | ');
  } catch {
    return '';
  }
}

// ---------------------------------------------------------------------------------------------
// swap on
// ---------------------------------------------------------------------------------------------

export async function swapOn(o: SwapOnOptions): Promise<SwapState> {
  requireRoot('zdedup swap on');
  if (!Number.isInteger(o.priority) || o.priority < -1 || o.priority > 32767) {
    throw new SwapError('ERR_INVALID_ARGUMENT', `--priority must be an integer in -1..32767, got ${o.priority}`);
  }
  const socket = resolve(o.socket);
  const method = chooseMethod(o.method);
  const tools = requireTools(['mkswap', 'swapon', 'swapoff'] as const);
  const nbdClient = method === 'nbd-client' ? requireTools(['nbd-client'] as const)['nbd-client'] : '';
  const fuseTools = method === 'nbdfuse' ? requireTools(['nbdfuse', 'fusermount3', 'losetup'] as const) : null;
  let isSocket = false;
  try { isSocket = statSync(socket).isSocket(); } catch { /* missing: reported below */ }
  if (!isSocket) {
    throw new SwapError('ERR_ATTACH_FAILED', `${socket} is not a unix socket: is \`zdedup serve --socket ${socket}\` running?`);
  }

  const id = stateId(socket, o.export);
  const prev = loadState(o.stateDir, id);
  if (prev !== null) {
    const live = prev.device !== null && readProcSwaps().some((s) => s.filename === prev.device);
    throw new SwapError('ERR_ALREADY_ON', live
      ? `${socket} export "${o.export}" is already swap on ${prev.device}`
      : `a previous attach of ${socket} export "${o.export}" left state behind (${prev.device ?? 'no device'}); run \`zdedup swap off\` first`);
  }

  const s: SwapState = {
    format: 1, id, socket, export: o.export, http: o.http, priority: o.priority, discard: o.discard, method,
    device: null, nbdfuse: null, cgroup: null,
    done: { connected: false, mounted: false, loop: false, mkswap: false, swapon: false },
    notes: [], createdAt: new Date().toISOString(),
  };
  saveState(o.stateDir, s);
  try {
    if (method === 'nbd-client') {
      const dev = freeNbdDevices()[0];
      if (dev === undefined) throw new SwapError('ERR_NO_ATTACH_PATH', 'every /dev/nbd* device is in use');
      const args = ['-unix', socket, '-b', '4096'];
      if (o.export !== '') args.push('-N', o.export);
      args.push(dev); // deliberately no -t: see the file comment
      await run(nbdClient, args);
      s.device = dev;
      s.done.connected = true;
      saveState(o.stateDir, s);
    } else {
      await attachNbdfuse(o, s, fuseTools!);
    }
    await run(tools.mkswap, [s.device!]);
    s.done.mkswap = true;
    saveState(o.stateDir, s);
    const discard = o.discard === 'both' ? '--discard' : `--discard=${o.discard}`;
    await run(tools.swapon, [discard, '--priority', String(o.priority), s.device!]);
    s.done.swapon = true;
    saveState(o.stateDir, s);
    return s;
  } catch (e) {
    const notes = await teardown(o.stateDir, s);
    const extra = notes.length > 0 ? ` (while undoing: ${notes.join('; ')})` : ' (steps done so far were undone)';
    if (e instanceof SwapError) throw new SwapError(e.code === 'ERR_NO_ATTACH_PATH' ? e.code : 'ERR_ATTACH_FAILED', e.message + extra, { cause: e });
    throw e;
  }
}

async function attachNbdfuse(o: SwapOnOptions, s: SwapState, tools: Record<'nbdfuse' | 'losetup', string>): Promise<void> {
  const mountpoint = join(o.stateDir, `swap-${s.id}.mnt`);
  const file = join(mountpoint, 'swap');
  const pidfile = join(o.stateDir, `swap-${s.id}.nbdfuse.pid`);
  const log = join(o.stateDir, `swap-${s.id}.nbdfuse.log`);
  const uri = nbdUnixUri(s.socket, s.export);
  mkdirSync(mountpoint, { recursive: true });
  rmSync(pidfile, { force: true });

  if (o.cgroup !== null) {
    const isPath = o.cgroup.includes('/');
    const cg = isPath ? MemoryCgroup.open(o.cgroup) : createMemoryCgroup(o.cgroup, { swap: 'deny' });
    s.cgroup = { path: cg.path, created: !isPath };
    saveState(o.stateDir, s);
  }

  // nbdfuse stays in the foreground serving FUSE until unmounted; -P writes its pid once it is
  // ready. It is detached into its own session so it outlives this command.
  const logFd = openSync(log, 'w');
  const args = ['-P', pidfile, file, uri];
  const spawnOpts = { detached: true, stdio: ['ignore', logFd, logFd] as ['ignore', number, number] };
  const child = s.cgroup !== null
    ? spawnInCgroup(MemoryCgroup.open(s.cgroup.path), tools.nbdfuse, args, spawnOpts)
    : spawn(tools.nbdfuse, args, spawnOpts);
  closeSync(logFd);
  let exited: number | null = null;
  child.on('exit', (code, sig) => { exited = code ?? (sig !== null ? 128 : 1); });
  child.on('error', () => { exited = 127; });
  child.unref();
  const pid = await pollUntil(() => {
    if (exited !== null) return -1;
    try {
      const p = Number(readFileSync(pidfile, 'utf8').trim());
      return p > 0 && isMounted(mountpoint) ? p : null;
    } catch {
      return null;
    }
  }, 400, 25);
  if (pid === null || pid === -1) {
    if (exited === null && child.pid !== undefined) {
      // record it so teardown stops it
      s.nbdfuse = { pid: child.pid, mountpoint, file, uri, log };
      s.done.mounted = true;
    }
    const why = readLog(log) || 'no output';
    if (!s.done.mounted) { // it exited by itself: nothing for teardown to stop, tidy its files here
      rmSync(log, { force: true });
      try { rmdirSync(mountpoint); } catch { /* not empty or gone */ }
    }
    throw new SwapError('ERR_ATTACH_FAILED', `nbdfuse ${uri} did not come up${exited !== null ? ` (exit ${exited})` : ''}: ${why}`);
  }
  s.nbdfuse = { pid, mountpoint, file, uri, log };
  s.done.mounted = true;
  saveState(o.stateDir, s);
  // nbdfuse is in the swap I/O path exactly like the server: never the OOM killer's choice.
  const oomNote = protectFromOomKiller(pid);
  if (oomNote !== null) s.notes.push(oomNote);

  const { stdout } = await run(tools.losetup, ['--find', '--show', '--direct-io=on', file]);
  const dev = stdout.trim();
  if (!/^\/dev\/loop\d+$/.test(dev)) throw new SwapError('ERR_ATTACH_FAILED', `losetup printed "${dev}", expected /dev/loopN`);
  s.device = dev;
  s.done.loop = true;
  saveState(o.stateDir, s);
  // --direct-io=on is a request; losetup falls back to buffered I/O if the file refuses O_DIRECT
  const dio = readFileSync(`/sys/block/${basename(dev)}/loop/dio`, 'utf8').trim();
  if (dio !== '1') throw new SwapError('ERR_ATTACH_FAILED', `${dev} did not enable direct I/O on ${file}; refusing to swap through a double-caching loop device`);
}

// ---------------------------------------------------------------------------------------------
// swap off
// ---------------------------------------------------------------------------------------------

/**
 * Undoes the recorded steps in reverse. Returns notes about steps that had already been undone by
 * someone else (not errors); throws ERR_DETACH_FAILED, keeping the state file, if a step fails.
 */
async function teardown(stateDir: string, s: SwapState): Promise<string[]> {
  const notes: string[] = [];
  const tool = (n: string): string => {
    const p = findTool(n);
    if (p === null) throw new SwapError('ERR_TOOL_MISSING', `${n} is needed to detach ${s.device ?? s.id} but is not installed`);
    return p;
  };
  const dev = s.device;
  if (s.done.swapon && dev !== null) {
    if (readProcSwaps().some((p) => p.filename === dev)) {
      // swapoff reads every swapped page back into RAM through the server: it can take a while
      await run(tool('swapoff'), [dev], 'ERR_DETACH_FAILED');
    } else {
      notes.push(`${dev} was no longer swap`);
    }
    s.done.swapon = false;
    saveState(stateDir, s);
  }
  s.done.mkswap = false;

  if (s.done.loop && dev !== null && s.nbdfuse !== null) {
    const backing = loopBackingFile(dev);
    if (backing === s.nbdfuse.file) {
      await run(tool('losetup'), ['-d', dev], 'ERR_DETACH_FAILED');
    } else {
      notes.push(`${dev} was no longer bound to ${s.nbdfuse.file} (${backing ?? 'free'}); left alone`);
    }
    s.done.loop = false;
    saveState(stateDir, s);
  }

  if (s.done.mounted && s.nbdfuse !== null) {
    const { pid, mountpoint } = s.nbdfuse;
    if (isMounted(mountpoint)) {
      // unmounting makes nbdfuse exit on its own; it flushes and closes its NBD connections
      await run(tool('fusermount3'), ['-u', mountpoint], 'ERR_DETACH_FAILED');
    }
    const gone = await pollUntil(() => (pidAlive(pid) ? null : true), 200, 25);
    if (gone === null && pidComm(pid) === 'nbdfuse') {
      process.kill(pid, 'SIGTERM');
      if ((await pollUntil(() => (pidAlive(pid) ? null : true), 200, 25)) === null) process.kill(pid, 'SIGKILL');
    }
    try { rmdirSync(mountpoint); } catch { /* already gone or not empty: leave it */ }
    rmSync(join(stateDir, `swap-${s.id}.nbdfuse.pid`), { force: true });
    s.done.mounted = false;
    saveState(stateDir, s);
  }

  if (s.done.connected && dev !== null) {
    await run(tool('nbd-client'), ['-d', dev], 'ERR_DETACH_FAILED');
    s.done.connected = false;
    saveState(stateDir, s);
  }

  if (s.cgroup?.created) {
    const cg = MemoryCgroup.open(s.cgroup.path);
    if (cg.pids().length === 0) await cg.remove();
    else notes.push(`cgroup ${s.cgroup.path} still has processes; left in place`);
  }
  if (s.nbdfuse !== null) rmSync(s.nbdfuse.log, { force: true });
  removeState(stateDir, s.id);
  return notes;
}

/** Detaches one export (by socket + export name). Returns notes; throws ERR_NOT_ON if unknown. */
export async function swapOff(t: SwapTarget): Promise<{ state: SwapState; notes: string[] }> {
  requireRoot('zdedup swap off');
  const socket = resolve(t.socket);
  const s = loadState(t.stateDir, stateId(socket, t.export));
  if (s === null) throw new SwapError('ERR_NOT_ON', `no swap attached for ${socket} export "${t.export}" (no state in ${t.stateDir})`);
  const notes = await teardown(t.stateDir, s);
  return { state: s, notes };
}

/** Detaches a given state (used by `swap off --all`). */
export async function swapOffState(stateDir: string, s: SwapState): Promise<string[]> {
  requireRoot('zdedup swap off');
  return teardown(stateDir, s);
}
