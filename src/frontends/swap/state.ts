/**
 * The record `zdedup swap on` leaves behind so that `zdedup swap off` undoes exactly what it did,
 * and nothing else: one JSON file per attached export, <stateDir>/swap-<id>.json, where <id> is a
 * short hash of (socket, export). Default stateDir is /run/zdedup (tmpfs: a reboot forgets it, as
 * it forgets the swap itself).
 *
 * Each step is recorded *after* it succeeded and before the next one starts, so a crash midway
 * leaves a file that `swap off` can still undo step by step. The file is replaced atomically
 * (write to .tmp, rename), so it is never seen half-written.
 *
 *   on:   connect (nbd-client)        |  mount (nbdfuse) -> loop (losetup) -> ...
 *         ... -> mkswap -> swapon
 *   off:  the reverse, skipping steps that are not recorded
 */
import { defaultSocketPath } from '../paths.js';
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SwapError } from './system.js';

export const DEFAULT_STATE_DIR = '/run/zdedup';
/** The server's default socket (the same rule as `zdedup serve`). */
export const DEFAULT_SOCKET = defaultSocketPath();

export type AttachMethod = 'nbd-client' | 'nbdfuse';

export interface SwapState {
  format: 1;
  id: string;
  /** Absolute path of the server's unix socket. */
  socket: string;
  /** Export name ("" = the default export). */
  export: string;
  /** ADDR:PORT of the server's HTTP endpoint (for `status`), if known. */
  http: string | null;
  priority: number;
  discard: string;
  method: AttachMethod;
  /** The block device given to swapon: /dev/nbdN or /dev/loopN; null until known. */
  device: string | null;
  nbdfuse: null | {
    pid: number;
    mountpoint: string;
    /** The FUSE file that backs the loop device. */
    file: string;
    uri: string;
    log: string;
  };
  /** Memory cgroup nbdfuse was started in; `created` = we made it, so `off` removes it. */
  cgroup: null | { path: string; created: boolean };
  /** Steps completed, in order (see the file comment). */
  done: {
    connected: boolean; // nbd-client attached /dev/nbdN
    mounted: boolean;   // nbdfuse serves the FUSE file
    loop: boolean;      // losetup bound /dev/loopN to it
    mkswap: boolean;
    swapon: boolean;
  };
  /** Things `on` could not do but did not need (e.g. oom_score_adj refused); shown to the user. */
  notes: string[];
  createdAt: string;
}

export function stateId(socket: string, exportName: string): string {
  return createHash('sha256').update(socket).update('\0').update(exportName).digest('hex').slice(0, 12);
}

export function statePath(stateDir: string, id: string): string {
  return join(stateDir, `swap-${id}.json`);
}

export function saveState(stateDir: string, s: SwapState): void {
  mkdirSync(stateDir, { recursive: true, mode: 0o755 });
  const p = statePath(stateDir, s.id);
  writeFileSync(`${p}.tmp`, JSON.stringify(s, null, 2) + '\n', { mode: 0o644 });
  renameSync(`${p}.tmp`, p);
}

export function removeState(stateDir: string, id: string): void {
  rmSync(statePath(stateDir, id), { force: true });
}

/** The state for `id`, or null if there is none (an expected outcome). */
export function loadState(stateDir: string, id: string): SwapState | null {
  let text: string;
  try {
    text = readFileSync(statePath(stateDir, id), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
  return parseState(text, statePath(stateDir, id));
}

/** Every state file in the directory, oldest first. */
export function listStates(stateDir: string): SwapState[] {
  let names: string[];
  try {
    names = readdirSync(stateDir);
  } catch {
    return [];
  }
  return names
    .filter((n) => /^swap-[0-9a-f]{12}\.json$/.test(n))
    .map((n) => parseState(readFileSync(join(stateDir, n), 'utf8'), join(stateDir, n)))
    .sort((a, b) => a.createdAt.localeCompare(b.createdAt));
}

function parseState(text: string, where: string): SwapState {
  let s: unknown;
  try {
    s = JSON.parse(text);
  } catch (e) {
    throw new SwapError('ERR_DETACH_FAILED', `${where} is not valid JSON; inspect and remove it by hand`, { cause: e });
  }
  const st = s as Partial<SwapState>;
  if (st.format !== 1 || typeof st.id !== 'string' || typeof st.done !== 'object' || st.done === null) {
    throw new SwapError('ERR_DETACH_FAILED', `${where} is not a zdedup swap state file (format 1)`);
  }
  return st as SwapState;
}
