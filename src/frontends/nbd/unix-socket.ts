/**
 * Listening on a unix socket so that nobody but the intended users can reach it, and so that two
 * servers started at once on one path end with exactly one listening and the other refusing.
 *
 *   ensureSocketDirectory (paths.ts)     directory exists, ours or root's, not writable by others
 *        │
 *   SocketLock.acquire(PATH.lock)        flock(LOCK_EX|LOCK_NB) held for the server's lifetime;
 *        │                               a second server fails here and touches nothing
 *   removeStaleSocket(PATH)              under the lock: a socket file nobody answers on, owned by
 *        │                               us, is a dead server's leftover and is removed
 *   bind with umask 0177                 the socket is born 0600: there is no moment at which the
 *        │                               umask's wider mode applies
 *   chmod MODE, chown :GROUP             only when --socket-mode / --socket-group widen it
 *
 * Why a lock: without one, two servers that both find a stale socket both unlink it; the second
 * unlink can remove the socket the first has just bound, leaving that server running but
 * unreachable. The lock is an flock on PATH.lock (libc through koffi, the FFI the codecs already
 * use), so the kernel releases it when the process dies, however it dies. The lock file is removed
 * on a clean stop; a server that finds it has locked a file that was unlinked meanwhile (its
 * inode is no longer the one at PATH.lock) drops it and tries again.
 *
 * Node binds a pipe server synchronously inside listen() (primary process, no cluster), which is
 * what makes the umask window exact: process.umask is set just before listen() and restored just
 * after, on the one JS thread.
 */
import { closeSync, fstatSync, lstatSync, openSync, constants as fsc, unlinkSync } from 'node:fs';
import net from 'node:net';
import koffi from 'koffi';
import { ZdedupError } from '../../core/errors.js';

const LOCK_EX = 2;
const LOCK_NB = 4;
const EWOULDBLOCK = 11;

type FlockFn = (fd: number, op: number) => number;
let flockFn: FlockFn | null | undefined;

function flock(): FlockFn | null {
  if (flockFn === undefined) {
    try {
      flockFn = koffi.load('libc.so.6').func('int flock(int fd, int op)') as unknown as FlockFn;
    } catch {
      flockFn = null; // not glibc: no lock (documented limit; the stale-socket probe still applies)
    }
  }
  return flockFn;
}

/** An exclusive lock on PATH.lock, held until release(). */
export class SocketLock {
  private constructor(readonly path: string, private fd: number) {}

  /**
   * Takes the lock for `socketPath` or throws ERR_INVALID_ARGUMENT when another server holds it.
   * The lock file is opened without following symlinks and must be a regular file we own.
   */
  static acquire(socketPath: string): SocketLock {
    const path = `${socketPath}.lock`;
    const lockFn = flock();
    for (let attempt = 0; ; attempt++) {
      let fd: number;
      try {
        fd = openSync(path, fsc.O_RDWR | fsc.O_CREAT | fsc.O_NOFOLLOW, 0o600);
      } catch (e) {
        throw new ZdedupError('ERR_INVALID_ARGUMENT', `cannot open lock file ${path}: ${(e as Error).message}`, { cause: e });
      }
      const st = fstatSync(fd);
      const uid = process.geteuid?.() ?? 0;
      if (!st.isFile() || st.uid !== uid) {
        closeSync(fd);
        throw new ZdedupError('ERR_INVALID_ARGUMENT', `lock file ${path} is not a regular file owned by uid ${uid}; refusing to use it`);
      }
      if (lockFn === null) return new SocketLock(path, fd);
      if (lockFn(fd, LOCK_EX | LOCK_NB) !== 0) {
        const errno = koffi.errno();
        closeSync(fd);
        if (errno === EWOULDBLOCK) {
          throw new ZdedupError('ERR_INVALID_ARGUMENT', `another server is listening on ${socketPath} (or starting: ${path} is locked)`);
        }
        throw new ZdedupError('ERR_IO', `flock ${path} failed (errno ${errno})`);
      }
      // Locked: but is it still the file at `path`? A server that stopped meanwhile unlinks it.
      let same = false;
      try {
        const now = lstatSync(path);
        same = now.ino === st.ino && now.dev === st.dev;
      } catch { /* gone: try again */ }
      if (same) return new SocketLock(path, fd);
      closeSync(fd);
      if (attempt >= 10) throw new ZdedupError('ERR_IO', `lock file ${path} keeps changing; another server is starting and stopping`);
    }
  }

  /** Removes the lock file (while still holding the lock), then releases the lock. Idempotent. */
  release(): void {
    if (this.fd < 0) return;
    try { unlinkSync(this.path); } catch { /* already gone */ }
    closeSync(this.fd);
    this.fd = -1;
  }
}

/**
 * Removes `path` if it is a socket nobody listens on and that we own (a dead server's leftover).
 * Throws if a server answers there, if it is not a socket, or if another user owns it. Call only
 * while holding the path's SocketLock.
 */
export async function removeStaleSocket(path: string): Promise<void> {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return; // nothing there
  }
  if (!st.isSocket()) throw new ZdedupError('ERR_INVALID_ARGUMENT', `${path} exists and is not a socket; refusing to replace it`);
  const alive = await new Promise<boolean>((resolve) => {
    const s = net.connect(path);
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
  if (alive) throw new ZdedupError('ERR_INVALID_ARGUMENT', `another server is listening on ${path}`);
  const uid = process.geteuid?.() ?? 0;
  if (st.uid !== uid) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', `${path} is a stale socket owned by uid ${st.uid}, not by us (uid ${uid}); refusing to remove it`);
  }
  unlinkSync(path);
}

/** srv.listen(path) with the umask at 0177, so the socket is created 0600 whatever the umask. */
export function listenPrivately(srv: net.Server, path: string): void {
  const old = process.umask(0o177);
  try {
    srv.listen(path);
  } finally {
    process.umask(old);
  }
}

/** "0660", "660", "0o660" → 0o660; throws ERR_INVALID_ARGUMENT for anything but permission bits. */
export function parseSocketMode(arg: string): number {
  const m = /^(?:0o?)?([0-7]{1,3})$/.exec(arg.trim());
  if (m === null) throw new ZdedupError('ERR_INVALID_ARGUMENT', `--socket-mode "${arg}": expected octal permission bits such as 0600 or 0660`);
  const mode = parseInt(m[1]!, 8);
  if ((mode & 0o600) !== 0o600) throw new ZdedupError('ERR_INVALID_ARGUMENT', `--socket-mode "${arg}": the owner needs read and write (0600 at least)`);
  return mode;
}

/** A group name (from /etc/group) or a numeric gid → gid; throws ERR_INVALID_ARGUMENT when unknown. */
export function resolveGroup(arg: string, groupFile: string): number {
  if (/^\d+$/.test(arg)) return Number(arg);
  for (const line of groupFile.split('\n')) {
    const f = line.split(':');
    if (f[0] === arg && f.length >= 3 && /^\d+$/.test(f[2]!)) return Number(f[2]);
  }
  throw new ZdedupError('ERR_INVALID_ARGUMENT', `--socket-group "${arg}": no such group in /etc/group (a numeric gid is accepted too)`);
}
