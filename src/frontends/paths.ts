/**
 * Default runtime paths, in one place. Root (a system daemon, `zdedup swap`) uses /run/zdedup;
 * an ordinary user gets $XDG_RUNTIME_DIR/zdedup, or <tmpdir>/zdedup-<uid> when that is unset,
 * so `zdedup serve` works out of the box without privileges.
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export function defaultRunDir(env: NodeJS.ProcessEnv = process.env): string {
  const uid = process.getuid?.() ?? 0;
  if (uid === 0) return '/run/zdedup';
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, 'zdedup');
  return join(tmpdir(), `zdedup-${uid}`);
}

export function defaultSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  return join(defaultRunDir(env), 'zdedup.sock');
}
