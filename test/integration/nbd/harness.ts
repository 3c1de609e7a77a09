/**
 * Test harness for the NBD integration tests: starts a real `zdedup serve` child process (the
 * built CLI, `node bin/zdedup.js`) on a temporary unix socket, waits for its "ready" log line,
 * and runs real client tools asynchronously (the server's stderr is a pipe we keep draining, so a
 * chatty server never blocks on its logs).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Repository root (this file runs from dist/test/integration/nbd/). */
export const REPO = fileURLToPath(new URL('../../../../', import.meta.url));
export const ZDEDUP = join(REPO, 'bin/zdedup.js');
/** nbdsh and the Debian python3-libnbd bindings need the system python first in PATH. */
export const SYSTEM_PATH = `/usr/bin:/usr/sbin:/bin:/sbin:${process.env.PATH ?? ''}`;

const toolCache = new Map<string, boolean>();
/** Whether an executable is installed (searched in SYSTEM_PATH). */
export function hasTool(name: string): boolean {
  let v = toolCache.get(name);
  if (v === undefined) {
    v = spawnSync('sh', ['-c', `command -v ${name}`], { env: { ...process.env, PATH: SYSTEM_PATH } }).status === 0;
    toolCache.set(name, v);
  }
  return v;
}

/** Whether /usr/bin/python3 has the libnbd bindings (python3-libnbd). */
export function hasPythonNbd(): boolean {
  return hasTool('nbdsh') && spawnSync('/usr/bin/python3', ['-c', 'import nbd']).status === 0;
}

export interface RunResult { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }

/** Runs a command to completion (async, so this process keeps draining the server's pipes). */
export function run(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; input?: string; cwd?: string } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { env: { ...process.env, PATH: SYSTEM_PATH, ...opts.env }, cwd: opts.cwd ?? REPO });
    let stdout = '';
    let stderr = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
    p.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    p.on('error', reject);
    p.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
    if (opts.input !== undefined) p.stdin.end(opts.input);
    else p.stdin.end();
  });
}

/** Runs a command and throws with its output unless it exits 0. */
export async function runOk(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; input?: string } = {}): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} exited ${r.code ?? r.signal}\nstdout: ${r.stdout.slice(-4000)}\nstderr: ${r.stderr.slice(-4000)}`);
  }
  return r;
}

export interface Server {
  proc: ChildProcess;
  dir: string;
  socket: string;
  /** "127.0.0.1:PORT" of /stats and /metrics, or null when started with --http off. */
  http: string | null;
  /** Every log line so far (parsed JSON). */
  logs: Record<string, unknown>[];
  /** NBD URI of an export on the unix socket. */
  uri(exportName?: string): string;
  /** SIGTERM and wait; resolves with the exit code/signal. Removes the temp directory. */
  stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * Starts `zdedup serve --socket <tmp> --http 127.0.0.1:0 <args>` and resolves once it logged
 * "ready" (rejects if it exits first).
 */
export async function startServer(args: string[], opts: { http?: boolean; socket?: string } = {}): Promise<Server> {
  const dir = mkdtempSync(join(tmpdir(), 'zdedup-nbd-'));
  const socket = opts.socket ?? join(dir, 'nbd.sock');
  const full = ['serve', '--socket', socket, '--http', opts.http === false ? 'off' : '127.0.0.1:0', ...args];
  const proc = spawn(process.execPath, [ZDEDUP, ...full], { stdio: ['ignore', 'ignore', 'pipe'], cwd: REPO });
  const logs: Record<string, unknown>[] = [];
  let partial = '';
  let rawTail = '';
  let onReady: ((l: Record<string, unknown>) => void) | undefined;
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => {
    rawTail = (rawTail + d).slice(-8000);
    partial += d;
    let i;
    while ((i = partial.indexOf('\n')) >= 0) {
      const line = partial.slice(0, i);
      partial = partial.slice(i + 1);
      try {
        const rec = JSON.parse(line) as Record<string, unknown>;
        if (logs.length < 100000) logs.push(rec);
        if (rec.msg === 'ready') onReady?.(rec);
      } catch { /* not JSON: kept in rawTail */ }
    }
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => {
    proc.on('exit', (code, signal) => r({ code, signal }));
  });
  const ready = await Promise.race([
    new Promise<Record<string, unknown>>((r) => { onReady = r; }),
    exited.then((x) => { throw new Error(`zdedup serve exited (${x.code ?? x.signal}) before ready:\n${rawTail}`); }),
  ]);
  const http = typeof ready.http === 'string' ? ready.http : null;
  return {
    proc, dir, socket, http, logs, exited,
    uri: (name = '') => `nbd+unix:///${encodeURIComponent(name)}?socket=${socket}`,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      const r = await exited;
      rmSync(dir, { recursive: true, force: true });
      return r;
    },
  };
}

/** GET http://<addr><path> and return the body (throws on a non-200). */
export async function httpGet(addr: string, path: string): Promise<string> {
  const res = await fetch(`http://${addr}${path}`);
  if (!res.ok) throw new Error(`GET ${path}: HTTP ${res.status}`);
  return res.text();
}

/** Runs one of the test/integration/nbd/*.py scripts under nbdsh with the given environment. */
export function nbdshScript(script: string, env: NodeJS.ProcessEnv): Promise<RunResult> {
  const path = join(REPO, 'test/integration/nbd', script);
  return run('nbdsh', ['-c', `exec(open(${JSON.stringify(path)}).read())`], { env });
}
