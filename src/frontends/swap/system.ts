/**
 * Small, careful wrappers around the host tools `zdedup swap` drives (swapon, losetup, nbdfuse, ...).
 *
 * Everything here runs external programs with an argument vector (never a shell string), captures
 * their output, and turns a failure into a SwapError carrying a stable `code` and the tool's own
 * stderr, so the user sees *why* (e.g. "swapon: /dev/loop0: swapon failed: Device or resource busy").
 *
 * Expected outcomes ("this pid is gone", "this tool is not installed") are return values; SwapError
 * is for things the user must act on.
 */
import { execFile } from 'node:child_process';
import { accessSync, constants, readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { ZdedupError, type ErrorCode } from '../../core/errors.js';

/** Stable codes of `zdedup swap` errors (scripts may switch on them); defined with the others in core/errors.ts. */
export type SwapErrorCode = Extract<ErrorCode, 'ERR_NOT_ROOT' | 'ERR_TOOL_MISSING' | 'ERR_NO_ATTACH_PATH' | 'ERR_ALREADY_ON' |
  'ERR_NOT_ON' | 'ERR_ATTACH_FAILED' | 'ERR_DETACH_FAILED' | 'ERR_CGROUP' | 'ERR_INVALID_ARGUMENT'>;

/** A ZdedupError raised by `zdedup swap`: only the swap codes. */
export class SwapError extends ZdedupError {
  constructor(code: SwapErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'SwapError';
  }
}

// ---------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------

/** Where each tool comes from on Debian, for the "not installed" message. */
const PACKAGE_OF: Record<string, string> = {
  'nbd-client': 'nbd-client',
  nbdfuse: 'nbdfuse',
  'fusermount3': 'fuse3',
  losetup: 'mount',
  mkswap: 'util-linux',
  swapon: 'mount',
  swapoff: 'mount',
};

/**
 * Finds an executable on PATH, plus the sbin directories a non-login root shell may lack.
 * Returns null when it is not installed (an expected outcome: the caller decides).
 */
export function findTool(name: string): string | null {
  const dirs = (process.env['PATH'] ?? '').split(delimiter).filter((d) => d !== '');
  for (const d of ['/usr/local/sbin', '/usr/sbin', '/sbin', '/usr/bin', '/bin']) if (!dirs.includes(d)) dirs.push(d);
  for (const d of dirs) {
    const p = join(d, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch { /* not here */ }
  }
  return null;
}

/** Resolves every tool or throws one ERR_TOOL_MISSING naming all that are missing. */
export function requireTools<T extends string>(names: readonly T[]): Record<T, string> {
  const found = {} as Record<T, string>;
  const missing: string[] = [];
  for (const n of names) {
    const p = findTool(n);
    if (p === null) missing.push(`${n} (Debian package ${PACKAGE_OF[n] ?? n})`);
    else found[n] = p;
  }
  if (missing.length > 0) {
    throw new SwapError('ERR_TOOL_MISSING', `required tools not found: ${missing.join(', ')}; install them with apt-get`);
  }
  return found;
}

export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

export function requireRoot(what: string): void {
  if (!isRoot()) {
    throw new SwapError('ERR_NOT_ROOT', `${what} needs root (swapon, losetup and FUSE mounts are privileged); run it with sudo`);
  }
}

// ---------------------------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------------------------

export interface RunResult { stdout: string; stderr: string }

/**
 * Runs `file args` and resolves with its output; rejects with SwapError(code) quoting the
 * command line and the tool's stderr when it exits non-zero or cannot start.
 */
export function run(file: string, args: readonly string[], code: SwapErrorCode = 'ERR_ATTACH_FAILED'): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { encoding: 'utf8', maxBuffer: 4 << 20 }, (err, stdout, stderr) => {
      if (err) {
        const why = stderr.trim() || err.message;
        reject(new SwapError(code, `${[file, ...args].join(' ')}: ${why}`, { cause: err }));
      } else {
        resolve({ stdout, stderr });
      }
    });
  });
}

/** True when `pid` exists (signal 0 probes without delivering anything). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** argv[0] basename of a running pid, or null if it is gone: used to avoid killing a recycled pid. */
export function pidComm(pid: number): string | null {
  try {
    const argv0 = readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0')[0] ?? '';
    return argv0.split('/').pop() ?? '';
  } catch {
    return null;
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Polls `ready` every `intervalMs` until it returns a non-null value, or gives up after `tries`
 * attempts and returns null. Used for readiness (a FUSE mount appearing, a pid exiting), never to
 * measure anything.
 */
export async function pollUntil<T>(ready: () => T | null | Promise<T | null>, tries: number, intervalMs = 50): Promise<T | null> {
  for (let i = 0; i < tries; i++) {
    const v = await ready();
    if (v !== null) return v;
    await sleep(intervalMs);
  }
  return null;
}
