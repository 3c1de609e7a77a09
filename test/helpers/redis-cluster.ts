/**
 * A real Redis Cluster on loopback for tests and benchmarks: six Debian redis-server processes
 * (3 masters + 3 replicas, `--cluster-enabled yes`, a short cluster-node-timeout), joined by
 * `redis-cli --cluster create … --cluster-replicas 1 --cluster-yes`. Nothing is mocked.
 *
 * `redisMissing()` says why a test must skip (no redis-server / redis-cli on PATH); a test that
 * has them never skips. Each cluster lives in its own temporary directory and ports; stop()
 * kills every process it started (by pid).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export function redisMissing(): string | false {
  for (const bin of ['redis-server', 'redis-cli']) {
    const r = spawnSync('sh', ['-c', `command -v ${bin}`]);
    if (r.status !== 0) return `${bin} is not installed (apt-get install redis-server redis-tools); skipping the Redis Cluster test`;
  }
  return false;
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function redisCli(port: number, ...args: string[]): string {
  const r = spawnSync('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], { encoding: 'utf8', timeout: 10_000 });
  return (r.stdout ?? '') + (r.stderr ?? '');
}

/** Runs many commands through one redis-cli (one line each on stdin); returns one reply line per command. */
export function redisCliMany(port: number, commands: string[][]): string[] {
  if (commands.length === 0) return [];
  const input = commands.map((c) => c.join(' ')).join('\n') + '\n';
  const r = spawnSync('redis-cli', ['-h', '127.0.0.1', '-p', String(port)], { input, encoding: 'utf8', timeout: 30_000 });
  return (r.stdout ?? '').split('\n').filter((l) => l !== '');
}

export interface ClusterOptions {
  /** cluster-node-timeout in ms (default 1000: failover within a few seconds). */
  nodeTimeoutMs?: number;
  /** maxmemory per node (e.g. '64mb'), with noeviction: a full cluster refuses writes. */
  maxmemory?: string;
}

export class RedisCluster {
  readonly ports: number[] = [];
  private procs = new Map<number, ChildProcess>();
  private dir = '';
  private args = new Map<number, string[]>();

  /** Seeds for `--remote`: "127.0.0.1:P1,127.0.0.1:P2,…". */
  get seeds(): string { return this.ports.map((p) => `127.0.0.1:${p}`).join(','); }
  get url(): string { return `redis://${this.seeds}`; }

  static async start(opts: ClusterOptions = {}): Promise<RedisCluster> {
    const c = new RedisCluster();
    await c.boot(opts);
    return c;
  }

  private async boot(opts: ClusterOptions): Promise<void> {
    // However this process ends, its redis-servers end with it (by pid).
    process.once('exit', () => { for (const proc of this.procs.values()) { proc.kill('SIGCONT'); proc.kill('SIGKILL'); } });
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdedup-redis-'));
    for (let attempt = 0; ; attempt++) {
      const base = 20000 + Math.floor(Math.random() * 20000);
      let ok = true;
      for (let i = 0; i < 6 && ok; i++) ok = (await portFree(base + i)) && (await portFree(base + i + 10000));
      if (ok) { for (let i = 0; i < 6; i++) this.ports.push(base + i); break; }
      if (attempt > 20) throw new Error('no free ports for a Redis Cluster');
    }
    for (const p of this.ports) {
      const a = [
        '--port', String(p), '--bind', '127.0.0.1', '--cluster-enabled', 'yes',
        '--cluster-config-file', path.join(this.dir, `nodes-${p}.conf`), '--cluster-node-timeout', String(opts.nodeTimeoutMs ?? 1000),
        '--dir', this.dir, '--save', '', '--appendonly', 'no', '--protected-mode', 'no', '--daemonize', 'no',
        '--logfile', path.join(this.dir, `redis-${p}.log`),
        // a replica of a failed master takes over without waiting on data age (tests kill masters)
        '--cluster-replica-validity-factor', '0',
      ];
      if (opts.maxmemory) a.push('--maxmemory', opts.maxmemory, '--maxmemory-policy', 'noeviction');
      this.args.set(p, a);
      this.spawnNode(p);
    }
    for (const p of this.ports) await this.waitPing(p);
    const r = spawnSync('redis-cli', ['--cluster', 'create', ...this.ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '1', '--cluster-yes'],
      { encoding: 'utf8', timeout: 60_000 });
    if (r.status !== 0) throw new Error(`redis-cli --cluster create failed: ${r.stdout}${r.stderr}`);
    await this.waitOk();
  }

  private spawnNode(p: number): void {
    const proc = spawn('redis-server', this.args.get(p)!, { stdio: 'ignore' });
    proc.on('error', () => {});
    this.procs.set(p, proc);
  }

  private async waitPing(p: number): Promise<void> {
    for (let i = 0; i < 200; i++) {
      if (redisCli(p, 'PING').includes('PONG')) return;
      await sleep(50);
    }
    throw new Error(`redis-server on ${p} did not start`);
  }

  /** Waits until every live node reports cluster_state:ok and all 16384 slots are served by reachable masters. */
  async waitOk(timeoutMs = 60_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      const live = this.ports.filter((p) => this.procs.has(p));
      // slots served, and every master's replica linked (WAIT needs it)
      if (live.every((p) => redisCli(p, 'CLUSTER', 'INFO').includes('cluster_state:ok')) &&
          this.masters().every((p) => /slave0:[^\n]*state=online/.test(redisCli(p, 'INFO', 'replication')))) return;
      await sleep(100);
    }
    throw new Error('Redis Cluster did not reach cluster_state:ok');
  }

  /** Ports of the current masters (as a live node sees them). */
  masters(): number[] {
    const live = this.ports.find((p) => this.procs.has(p))!;
    return redisCli(live, 'CLUSTER', 'NODES').split('\n')
      .filter((l) => /\bmaster\b/.test(l) && !/\bfail\b/.test(l) && !/\bnoaddr\b/.test(l))
      .map((l) => Number(/:(\d+)@/.exec(l)![1]))
      .filter((p) => this.procs.has(p));
  }

  /** kill -9 one node (the process, by pid). */
  kill(p: number, signal: NodeJS.Signals = 'SIGKILL'): void {
    const proc = this.procs.get(p);
    if (!proc) return;
    proc.kill(signal);
    this.procs.delete(p);
  }

  /** Stops every node (SIGSTOP-free: processes are killed); restartAll() brings them back with their cluster config. */
  killAll(): void { for (const p of [...this.procs.keys()]) this.kill(p); }

  /** Restarts node p (after kill) with the same config file: it rejoins the cluster. */
  async restart(p: number): Promise<void> {
    this.spawnNode(p);
    await this.waitPing(p);
  }

  /** Freezes / thaws every node (SIGSTOP / SIGCONT): the cluster is unreachable but keeps its data. */
  pauseAll(): void { for (const proc of this.procs.values()) proc.kill('SIGSTOP'); }
  resumeAll(): void { for (const proc of this.procs.values()) proc.kill('SIGCONT'); }

  /** Sum over masters of INFO memory used_memory. */
  usedMemory(): number {
    let n = 0;
    for (const p of this.masters()) n += Number(/used_memory:(\d+)/.exec(redisCli(p, 'INFO', 'memory'))![1]);
    return n;
  }

  /** Keys held by the masters. */
  dbsize(): number {
    let n = 0;
    for (const p of this.masters()) n += Number(redisCli(p, 'DBSIZE').trim());
    return n;
  }

  async stop(): Promise<void> {
    for (const proc of this.procs.values()) { proc.kill('SIGCONT'); proc.kill('SIGKILL'); }
    this.procs.clear();
    await sleep(50);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
