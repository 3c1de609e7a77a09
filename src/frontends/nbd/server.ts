/**
 * The NBD server: the exports (one PageStore area each), the listeners that accept connections
 * (unix socket, TCP, an inherited socket-activation fd, or one connection on stdin/stdout), the
 * counters every connection shares, and graceful shutdown.
 *
 *   listeners ──accept──▶ NbdConnection ──▶ NbdExport ──▶ PageStore area
 *   (unix, tcp, fd 3,      (parser, options,   (bytes ↔ pages,   (one per export;
 *    stdio)                 replies)            RMW, extents)      shared store)
 *
 * Several connections may serve one export at once (CAN_MULTI_CONN): each applies its writes to
 * the shared store before replying, and everything runs on one thread, so a reply on one connection
 * means every other connection already sees the data.
 *
 * Limits (what a misbehaving or hostile client can hold):
 *   maxConnections      at the cap, a new connection evicts the oldest one still negotiating (a
 *                       client that connects and sends nothing cannot lock others out for the
 *                       whole deadline); when every connection is in transmission it is refused
 *   handshakeTimeoutMs  from accept to transmission (options, TLS handshake included)
 *   idleTimeoutMs       a request partly received, or replies not being read, with no progress
 *                       (an idle client between requests is never closed: swap can be quiet for days)
 *   maxBufferedBytes    the buffer budget shared by all connections (budget.ts)
 * The two timeouts are enforced by one sweep timer per server (period: a quarter of the shorter
 * timeout, at most 1 s), not a timer per connection or per request. Refusals and timeouts are
 * counted and logged, at most 10 lines a minute per kind.
 *
 * Unix sockets: see unix-socket.ts (0600 whatever the umask, safe directory, lock against a
 * concurrent start). TLS: per listener mode (tls.ts), one set of credentials per server.
 */
import { chmodSync, chownSync } from 'node:fs';
import net from 'node:net';
import { dirname } from 'node:path';
import type { AreaId, PageStore } from '../../core/page-store.js';
import { ZdedupError } from '../../core/errors.js';
import { reclaimMemory } from '../../core/reclaim.js';
import { RateLimitedLog, type Logger } from '../log.js';
import { ensureSocketDirectory } from '../paths.js';
import { BufferBudget, DEFAULT_BUDGET, RECLAIM_AFTER } from './budget.js';
import { NbdConnection, type ConnectionHost, type ConnectionOptions } from './connection.js';
import { NbdCounters } from './counters.js';
import { CacheExport, CacheExports, type CacheExportInfo } from './cache-export.js';
import { NbdExport, type ExportSpec } from './export.js';
import { MAX_STRING } from './protocol.js';
import type { TlsCredentials, TlsMode } from './tls.js';
import { SocketLock, listenPrivately, removeStaleSocket } from './unix-socket.js';

/** Connection limits (see the file comment). A timeout of 0 disables it. */
export interface NbdLimits {
  /** Connections open at once, stdio included (default 64). */
  maxConnections: number;
  /** From accept to transmission (default 10 s). */
  handshakeTimeoutMs: number;
  /** A partial request or unread replies with no progress (default 60 s). */
  idleTimeoutMs: number;
  /** Request payloads and READ replies held at once, all connections (default 256 MiB, at least 32 MiB + 64 KiB). */
  maxBufferedBytes: number;
}

/** After the budget empties: wait this long, and collect at most once per interval. */
const RECLAIM_DELAY_MS = 200;
const RECLAIM_INTERVAL_MS = 5000;

export const DEFAULT_LIMITS: Readonly<NbdLimits> = {
  maxConnections: 64,
  handshakeTimeoutMs: 10_000,
  idleTimeoutMs: 60_000,
  maxBufferedBytes: DEFAULT_BUDGET,
};

export interface NbdServerOptions {
  store: PageStore;
  /** The store's page size (the preferred block size we advertise). */
  pageSize: number;
  /** At least one; names unique. */
  exports: ExportSpec[];
  log: Logger;
  limits?: Partial<NbdLimits>;
  /** TLS credentials (tls.ts); needed by any listener whose mode is 'on' or 'require'. */
  tls?: TlsCredentials;
}

/** Per listener: its TLS mode (default 'off'). */
export interface ListenOptions { tls?: TlsMode }

/** A unix listener: also the socket's mode (default 0600) and group. */
export interface UnixListenOptions extends ListenOptions {
  mode?: number;
  gid?: number;
}

/** Per-export facts for /stats. Page counts are the store's live per-area counters. */
export interface ExportInfo {
  name: string;
  description: string;
  size: number;
  read_only: boolean;
  pages: number;
  data_pages: number;
  zero_pages: number;
  hole_pages: number;
  /** RAM pool bytes held by objects this export created (null unless some export has a quota). */
  pool_bytes: number | null;
  /** The export's pool quota (0 = none). */
  max_pool_bytes: number;
  /** A cache export's image file and counters (absent for other exports). */
  cache?: CacheExportInfo;
}

/** Exports larger than this many pages are not scanned for /stats (a scan costs one call per page). */

export class NbdServer implements ConnectionHost {
  readonly counters = new NbdCounters();
  readonly exports: readonly NbdExport[];
  readonly limits: Readonly<NbdLimits>;
  readonly budget: BufferBudget;
  private readonly byName = new Map<string, NbdExport>();
  private readonly listeners: net.Server[] = [];
  private readonly locks: SocketLock[] = [];
  /** Open connections in accept order (eviction takes the oldest still negotiating). */
  private readonly conns = new Set<NbdConnection>();
  private nextId = 1;
  private closing = false;
  private readonly log: Logger;
  private readonly limited: RateLimitedLog;
  private sweepTimer: NodeJS.Timeout | undefined;

  constructor(private readonly opts: NbdServerOptions) {
    this.log = opts.log;
    this.limited = new RateLimitedLog(opts.log);
    const limits = { ...DEFAULT_LIMITS, ...opts.limits };
    for (const [k, v] of Object.entries(limits)) {
      if (!Number.isSafeInteger(v) || v < 0) throw new ZdedupError('ERR_INVALID_ARGUMENT', `limit ${k} must be a non-negative integer, got ${v}`);
    }
    if (limits.maxConnections < 1) throw new ZdedupError('ERR_INVALID_ARGUMENT', 'at least one connection must be allowed (--max-connections)');
    this.limits = limits;
    this.budget = new BufferBudget(limits.maxBufferedBytes, this.counters);
    this.budget.onDrained = () => this.scheduleReclaim();
    if (opts.exports.length === 0) throw new ZdedupError('ERR_INVALID_ARGUMENT', 'at least one export is needed');
    const list: NbdExport[] = [];
    for (const spec of opts.exports) {
      if (this.byName.has(spec.name)) throw new ZdedupError('ERR_INVALID_ARGUMENT', `export "${spec.name}" defined twice`);
      if (Buffer.byteLength(spec.name, 'utf8') > MAX_STRING) throw new ZdedupError('ERR_INVALID_ARGUMENT', 'export name longer than 4096 bytes');
      if (spec.cache !== undefined) {
        this.cache ??= new CacheExports(opts.store, opts.pageSize, opts.log);
        const e = this.cache.open(spec);
        this.byName.set(spec.name, e);
        list.push(e);
        continue;
      }
      if (!Number.isSafeInteger(spec.size) || spec.size <= 0) {
        throw new ZdedupError('ERR_INVALID_ARGUMENT', `export "${spec.name}" size must be a positive integer, got ${spec.size}`);
      }
      const area = exportArea(opts.store, spec, opts.pageSize);
      const e = new NbdExport(opts.store, spec, opts.pageSize, area);
      this.byName.set(spec.name, e);
      list.push(e);
    }
    this.exports = list;
    this.cache?.start();
  }

  /** The cache exports' images and shared pool (cache-export.ts), when there are any. */
  private cache: CacheExports | undefined;

  // ---- ExportDirectory / ConnectionHost ------------------------------------------------------


  findExport(name: string): NbdExport | undefined { return this.byName.get(name); }
  listExports(): readonly NbdExport[] { return this.exports; }
  connectionClosed(c: NbdConnection): void { this.conns.delete(c); }
  get connectionCount(): number { return this.conns.size; }

  // ---- listeners ----------------------------------------------------------------------------

  /**
   * Listens on a unix socket, mode 0600 (or `mode`) whatever the umask, group `gid` if given.
   * The directory is created (0700) if missing and must be safe (paths.ts). Takes PATH.lock for
   * the server's lifetime, so a second server on the same path fails without touching anything;
   * under the lock, removes a stale socket file left by a server that died, but refuses if a
   * server still answers there, the path is not a socket, or another user owns it.
   */
  async listenUnix(path: string, o: UnixListenOptions = {}): Promise<void> {
    const mode = o.mode ?? 0o600;
    ensureSocketDirectory(dirname(path), { group: (mode & 0o060) !== 0, others: (mode & 0o006) !== 0, gid: o.gid });
    const lock = SocketLock.acquire(path);
    let srv: net.Server | undefined;
    try {
      await removeStaleSocket(path);
      srv = await this.listen((s) => listenPrivately(s, path), `unix:${path}`, o);
      if (mode !== 0o600) chmodSync(path, mode);
      if (o.gid !== undefined) chownSync(path, -1, o.gid);
    } catch (e) {
      if (srv !== undefined) {
        this.listeners.splice(this.listeners.indexOf(srv), 1);
        await new Promise<void>((r) => srv!.close(() => r()));
      }
      lock.release();
      if ((e as NodeJS.ErrnoException).code === 'EPERM' && o.gid !== undefined) {
        throw new ZdedupError('ERR_INVALID_ARGUMENT', `--socket-group: cannot give ${path} to gid ${o.gid} (not a member of that group?)`, { cause: e });
      }
      throw e;
    }
    this.locks.push(lock);
  }

  /** Listens on TCP (host defaults to 127.0.0.1). Returns the bound port (useful with port 0). */
  async listenTcp(host: string, port: number, o: ListenOptions = {}): Promise<number> {
    const s = await this.listen((srv) => srv.listen({ host, port }), `tcp:${host}:${port}`, o);
    return (s.address() as net.AddressInfo).port;
  }

  /** Accepts on an inherited listening socket (systemd / libnbd socket activation). */
  async listenFd(fd: number, o: ListenOptions = {}): Promise<void> {
    await this.listen((s) => s.listen({ fd }), `fd:${fd}`, o);
  }

  /**
   * Serves one connection over a pair of streams (stdin/stdout for --stdio). Resolves when it
   * closes.
   */
  serveStreams(input: net.Socket, output: net.Socket, o: ListenOptions = {}): Promise<void> {
    const c = this.accept(input, output, 'stdio', this.connectionOptions(o));
    return c.closed;
  }

  /**
   * Graceful stop: close the listeners, let every connection answer what it has fully received,
   * then close it. Connections still open after `graceMs` are destroyed.
   */
  async close(graceMs = 5000): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    clearInterval(this.sweepTimer);
    clearTimeout(this.reclaimTimer);
    // net.Server.close() calls back only once every connection it accepted has ended: start it
    // (no new connections from here on), shut the connections down, then wait for both.
    const listenersClosed = Promise.all(this.listeners.map((s) => new Promise<void>((r) => s.close(() => r()))));
    const all = [...this.conns];
    for (const c of all) c.shutdown();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((r) => { timer = setTimeout(r, graceMs); timer.unref(); });
    await Promise.race([Promise.all(all.map((c) => c.closed)), timeout]);
    clearTimeout(timer);
    for (const c of this.conns) c.destroy();
    await Promise.all(all.map((c) => c.closed));
    await listenersClosed;
    await this.cache?.close();
    // The unix sockets are gone (closing a listener unlinks its path): now let another server in.
    for (const l of this.locks) l.release();
    this.locks.length = 0;
  }

  // ---- /stats -------------------------------------------------------------------------------

  exportInfo(): ExportInfo[] {
    const store = this.opts.store;
    return this.exports.map((e) => {
      const pages = Math.ceil(e.size / e.pageSize);
      if (e instanceof CacheExport) {
        return {
          name: e.name, description: e.description, size: e.size, read_only: e.readOnly, pages,
          data_pages: pages, zero_pages: 0, hole_pages: 0, pool_bytes: null, max_pool_bytes: 0, cache: e.info(),
        };
      }
      const a = store.areaStats(e.area);
      return {
        name: e.name, description: e.description, size: e.size, read_only: e.readOnly, pages,
        data_pages: a.stored_pages - a.zero_pages, zero_pages: a.zero_pages, hole_pages: a.hole_pages,
        pool_bytes: a.pool_bytes, max_pool_bytes: a.max_pool_bytes,
      };
    });
  }

  // ---- internals ----------------------------------------------------------------------------

  private connectionOptions(o: ListenOptions): ConnectionOptions {
    const mode = o.tls ?? 'off';
    if (mode !== 'off' && this.opts.tls === undefined) {
      throw new ZdedupError('ERR_INVALID_ARGUMENT', `--tls=${mode} needs credentials: --tls-certificates DIR or --tls-psk FILE`);
    }
    return { tlsMode: mode, tls: mode === 'off' ? undefined : this.opts.tls };
  }

  private async listen(start: (s: net.Server) => void, where: string, o: ListenOptions): Promise<net.Server> {
    const copts = this.connectionOptions(o);
    // allowHalfOpen: the connection decides when to end its side (after flushing its replies).
    const srv = net.createServer({ allowHalfOpen: true, noDelay: true }, (sock) => {
      if (this.closing) { sock.destroy(); return; }
      if (!this.makeRoom(sock, where)) return;
      this.accept(sock, sock, where, copts);
    });
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.once('listening', () => { srv.off('error', reject); resolve(); });
      start(srv);
    });
    srv.on('error', (e) => this.log.error('listener error', { where, cause: e }));
    this.listeners.push(srv);
    return srv;
  }

  private accept(input: net.Socket, output: net.Socket, where: string, copts: ConnectionOptions): NbdConnection {
    const id = this.nextId++;
    const peer = input.remoteAddress !== undefined ? `${input.remoteAddress}:${input.remotePort}` : where;
    const log = this.log.child({ conn: id });
    const c = new NbdConnection(this, input, output, id, log, copts);
    c.peer = peer;
    this.conns.add(c);
    log.debug('connection', { peer });
    c.start();
    this.startSweep();
    return c;
  }

  // ---- limits -------------------------------------------------------------------------------

  /**
   * At --max-connections: evict the oldest connection still negotiating, or refuse `sock` (closed
   * at once, nothing sent: the greeting has no way to say "busy"). Returns whether to accept.
   */
  private makeRoom(sock: net.Socket, where: string): boolean {
    if (this.conns.size < this.limits.maxConnections) return true;
    const peer = sock.remoteAddress !== undefined ? `${sock.remoteAddress}:${sock.remotePort}` : where;
    for (const c of this.conns) {
      if (!c.negotiating) continue;
      this.counters.handshake_evicted++;
      this.limited.warn('handshake_evicted', 'connection limit reached: closing the oldest connection still negotiating', {
        conn: c.id, peer: c.peer, max_connections: this.limits.maxConnections,
      });
      this.drop(c);
      return true;
    }
    this.counters.connections_refused_limit++;
    this.limited.warn('connections_refused_limit', 'connection limit reached: refusing a connection', { peer, max_connections: this.limits.maxConnections });
    sock.destroy();
    return false;
  }

  /** Closes a connection for a limit; it no longer counts against the cap from this moment. */
  private drop(c: NbdConnection): void {
    this.conns.delete(c);
    c.timeOut();
  }

  private reclaimTimer: NodeJS.Timeout | undefined;
  private lastReclaim = 0;

  /**
   * The budget emptied after a burst: in a moment, if it is still nearly empty, run one full
   * garbage collection so the reply buffers just released are unmapped (budget.ts). At most one
   * every RECLAIM_INTERVAL_MS; a collection of this server's small JS heap is a few milliseconds.
   */
  private scheduleReclaim(): void {
    if (this.reclaimTimer !== undefined || this.closing) return;
    const wait = Math.max(RECLAIM_DELAY_MS, this.lastReclaim + RECLAIM_INTERVAL_MS - Date.now());
    this.reclaimTimer = setTimeout(() => {
      this.reclaimTimer = undefined;
      if (this.budget.inUse >= RECLAIM_AFTER) return;
      this.lastReclaim = Date.now();
      const ms = reclaimMemory();
      if (ms !== null) this.log.debug('buffers reclaimed after a burst', { gc_ms: ms });
    }, wait);
    this.reclaimTimer.unref();
  }

  private startSweep(): void {
    if (this.sweepTimer !== undefined) return;
    const { handshakeTimeoutMs: hs, idleTimeoutMs: idle } = this.limits;
    const shortest = Math.min(hs > 0 ? hs : Infinity, idle > 0 ? idle : Infinity);
    if (shortest === Infinity) return;
    this.sweepTimer = setInterval(() => this.sweep(), Math.max(5, Math.min(1000, Math.floor(shortest / 4))));
    this.sweepTimer.unref();
  }

  /** Closes connections past the handshake deadline or idle with a partial request too long. */
  sweep(now = Date.now()): void {
    const { handshakeTimeoutMs: hs, idleTimeoutMs: idle } = this.limits;
    for (const c of this.conns) {
      if (c.negotiating) {
        if (hs > 0 && now - c.acceptedAt >= hs) {
          this.counters.handshake_timeouts++;
          this.limited.warn('handshake_timeouts', 'handshake deadline passed: closing', { conn: c.id, peer: c.peer, state: c.state, timeout_ms: hs });
          this.drop(c);
        }
        continue;
      }
      if (idle > 0) {
        const since = c.idleSince(now);
        if (since !== 0 && now - since >= idle) {
          this.counters.idle_timeouts++;
          this.limited.warn('idle_timeouts', 'no progress on a partial request or unread replies: closing', { conn: c.id, peer: c.peer, state: c.state, timeout_ms: idle });
          this.drop(c);
        }
      }
    }
  }
}

/**
 * The store area behind an export: created, or — durable mode — the one recovered from the
 * backing, whose persisted size must not be larger than asked (an export grows, never shrinks).
 */
function exportArea(store: PageStore, spec: ExportSpec, pageSize: number): AreaId {
  const name = `nbd:${spec.name}`;
  const pages = Math.ceil(spec.size / pageSize);
  const meta = JSON.stringify({ size: spec.size });
  if (!store.hasArea(name)) return store.createArea(name, pages, { maxPoolBytes: spec.maxPool ?? 0, meta });
  const area = store.area(name);
  const held = Number((JSON.parse(store.areaMeta(area) ?? '{}') as { size?: number }).size ?? store.areaPages(area) * pageSize);
  if (spec.size < held) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT',
      `export "${spec.name}" holds ${held} bytes on the backing; ${spec.size} was asked (an export may grow, not shrink: give --size ${held} or more)`);
  }
  if (spec.size > held) store.growArea(area, pages, meta);
  return area;
}
