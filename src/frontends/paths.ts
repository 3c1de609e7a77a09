/**
 * Default runtime paths, in one place, and the safety rule for the directories that hold our
 * sockets. Root (a system daemon, `zdedup swap`) uses /run/zdedup; an ordinary user gets
 * $XDG_RUNTIME_DIR/zdedup, or <tmpdir>/zdedup-<uid> when that is unset, so `zdedup serve` works
 * out of the box without privileges.
 *
 * Why the directory matters: whoever can write the directory that holds the socket can replace the
 * socket with their own (and read every page a client then swaps to it), or pre-create the
 * directory (/tmp/zdedup-1000 is a name anyone can take first). So a socket directory, and every
 * directory above it, must be owned by us or by root and must not be writable by group or others.
 * The one exception is a root-owned sticky directory such as /tmp or /dev/shm: there nobody may
 * remove or rename an entry they do not own, so our socket cannot be replaced; at worst another
 * user can take the name first, and then we refuse to start (we never unlink a socket that is not
 * ours, see nbd/unix-socket.ts) instead of serving somewhere a client would not look.
 */
import { chmodSync, chownSync, lstatSync, mkdirSync, realpathSync, type Stats } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, sep } from 'node:path';
import { ZdedupError } from '../core/errors.js';

export function defaultRunDir(env: NodeJS.ProcessEnv = process.env): string {
  const uid = process.getuid?.() ?? 0;
  if (uid === 0) return '/run/zdedup';
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, 'zdedup');
  return join(tmpdir(), `zdedup-${uid}`);
}

export function defaultSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  return join(defaultRunDir(env), 'zdedup.sock');
}

const S_ISVTX = 0o1000;
const GROUP_OR_OTHER_WRITE = 0o022;

/**
 * Why `st` (a directory on the way to a socket) is unsafe for a server running as `uid`, or null
 * when it is safe: owned by `uid` or root, and not writable by group or others unless it is a
 * root-owned sticky directory (/tmp).
 */
export function unsafeDirectoryReason(st: Stats, uid: number): string | null {
  if (!st.isDirectory()) return 'not a directory';
  if (st.uid !== uid && st.uid !== 0) return `owned by uid ${st.uid}, not by this server's user (uid ${uid}) or root`;
  if ((st.mode & GROUP_OR_OTHER_WRITE) !== 0 && !(st.uid === 0 && (st.mode & S_ISVTX) !== 0)) {
    return `writable by ${(st.mode & 0o002) !== 0 ? 'others' : 'its group'} (mode ${(st.mode & 0o7777).toString(8)})`;
  }
  return null;
}

/**
 * Throws ERR_INVALID_ARGUMENT unless `dir` and every directory above it (after resolving
 * symlinks) pass unsafeDirectoryReason() for the current user.
 */
export function checkSafeDirectory(dir: string, uid: number = process.geteuid?.() ?? 0): void {
  let real: string;
  try {
    real = realpathSync(dir);
  } catch (e) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', `socket directory ${dir}: ${(e as Error).message}`, { cause: e });
  }
  for (let d = real; ; d = dirname(d)) {
    const why = unsafeDirectoryReason(lstatSync(d), uid);
    if (why !== null) {
      const where = d === real ? `socket directory ${dir}${real !== dir ? ` (${real})` : ''}` : `${d}, above the socket directory ${dir},`;
      throw new ZdedupError('ERR_INVALID_ARGUMENT',
        `${where} is ${why}; refusing to serve from it (another user could replace the socket). ` +
        'Use a directory only you can write, e.g. --socket $XDG_RUNTIME_DIR/zdedup.sock');
    }
    if (d === sep || dirname(d) === d) break;
  }
}

/**
 * Makes sure the directory for a socket exists and is safe. A missing directory (and missing
 * parents) is created mode 0700, plus search permission for the group and/or others when
 * `search` says a widened socket must be reachable (0710 / 0711), owned by `gid` when given.
 * An existing directory is left as it is and must pass checkSafeDirectory().
 */
export function ensureSocketDirectory(dir: string, search: { group: boolean; others: boolean; gid?: number } = { group: false, others: false }): void {
  const mode = 0o700 | (search.group ? 0o010 : 0) | (search.others ? 0o001 : 0);
  let created: string | undefined;
  try {
    // mkdir's mode is masked by the umask, which can only remove bits: 0700 stays at most 0700.
    created = mkdirSync(dir, { recursive: true, mode });
  } catch (e) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', `cannot create socket directory ${dir}: ${(e as Error).message}`, { cause: e });
  }
  if (created !== undefined) {
    // The umask may have removed the search bits we want; set them exactly on the directory we made.
    chmodSync(dir, mode);
    if (search.gid !== undefined) chownSync(dir, -1, search.gid);
  }
  checkSafeDirectory(dir);
}
