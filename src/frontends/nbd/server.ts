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
 */
import { mkdirSync, lstatSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import { dirname } from 'node:path';
import type { PageStore } from '../../core/page-store.js';
import { ZdedupError } from '../../core/errors.js';
import type { Logger } from '../log.js';
import { NbdConnection, type ConnectionHost } from './connection.js';
import { NbdCounters } from './counters.js';
import { NbdExport, type ExportSpec } from './export.js';
import { MAX_STRING } from './protocol.js';

export interface NbdServerOptions {
  store: PageStore;
  /** The store's page size (the preferred block size we advertise). */
  pageSize: number;
  /** At least one; names unique. */
  exports: ExportSpec[];
  log: Logger;
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
}

/** Exports larger than this many pages are not scanned for /stats (a scan costs one call per page). */

export class NbdServer implements ConnectionHost {
  readonly counters = new NbdCounters();
  readonly exports: readonly NbdExport[];
  private readonly byName = new Map<string, NbdExport>();
  private readonly listeners: net.Server[] = [];
  private readonly conns = new Set<NbdConnection>();
  private nextId = 1;
  private closing = false;
  private readonly log: Logger;

  constructor(private readonly opts: NbdServerOptions) {
    this.log = opts.log;
    if (opts.exports.length === 0) throw new ZdedupError('ERR_INVALID_ARGUMENT', 'at least one export is needed');
    const list: NbdExport[] = [];
    for (const spec of opts.exports) {
      if (this.byName.has(spec.name)) throw new ZdedupError('ERR_INVALID_ARGUMENT', `export "${spec.name}" defined twice`);
      if (Buffer.byteLength(spec.name, 'utf8') > MAX_STRING) throw new ZdedupError('ERR_INVALID_ARGUMENT', 'export name longer than 4096 bytes');
      if (!Number.isSafeInteger(spec.size) || spec.size <= 0) {
        throw new ZdedupError('ERR_INVALID_ARGUMENT', `export "${spec.name}" size must be a positive integer, got ${spec.size}`);
      }
      const pages = Math.ceil(spec.size / opts.pageSize);
      const area = opts.store.createArea(`nbd:${spec.name}`, pages);
      const e = new NbdExport(opts.store, spec, opts.pageSize, area);
      this.byName.set(spec.name, e);
      list.push(e);
    }
    this.exports = list;
  }

  // ---- ExportDirectory / ConnectionHost ------------------------------------------------------

  findExport(name: string): NbdExport | undefined { return this.byName.get(name); }
  listExports(): readonly NbdExport[] { return this.exports; }
  connectionClosed(c: NbdConnection): void { this.conns.delete(c); }
  get connectionCount(): number { return this.conns.size; }

  // ---- listeners ----------------------------------------------------------------------------

  /**
   * Listens on a unix socket. Creates the directory; removes a stale socket file left by a server
   * that died, but refuses if a server still answers there or the path is not a socket.
   */
  async listenUnix(path: string): Promise<void> {
    mkdirSync(dirname(path), { recursive: true });
    await removeStaleSocket(path);
    await this.listen((s) => s.listen(path), `unix:${path}`);
  }

  /** Listens on TCP (host defaults to 127.0.0.1). Returns the bound port (useful with port 0). */
  async listenTcp(host: string, port: number): Promise<number> {
    const s = await this.listen((srv) => srv.listen({ host, port }), `tcp:${host}:${port}`);
    return (s.address() as net.AddressInfo).port;
  }

  /** Accepts on an inherited listening socket (systemd / libnbd socket activation). */
  async listenFd(fd: number): Promise<void> {
    await this.listen((s) => s.listen({ fd }), `fd:${fd}`);
  }

  /**
   * Serves one connection over a pair of streams (stdin/stdout for --stdio). Resolves when it
   * closes.
   */
  serveStreams(input: net.Socket, output: net.Socket): Promise<void> {
    const c = this.accept(input, output, 'stdio');
    return c.closed;
  }

  /**
   * Graceful stop: close the listeners, let every connection answer what it has fully received,
   * then close it. Connections still open after `graceMs` are destroyed.
   */
  async close(graceMs = 5000): Promise<void> {
    if (this.closing) return;
    this.closing = true;
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
  }

  // ---- /stats -------------------------------------------------------------------------------

  exportInfo(): ExportInfo[] {
    const store = this.opts.store;
    return this.exports.map((e) => {
      const pages = Math.ceil(e.size / e.pageSize);
      const a = store.areaStats(e.area);
      return {
        name: e.name, description: e.description, size: e.size, read_only: e.readOnly, pages,
        data_pages: a.stored_pages - a.zero_pages, zero_pages: a.zero_pages, hole_pages: a.hole_pages,
      };
    });
  }

  // ---- internals ----------------------------------------------------------------------------

  private async listen(start: (s: net.Server) => void, where: string): Promise<net.Server> {
    // allowHalfOpen: the connection decides when to end its side (after flushing its replies).
    const srv = net.createServer({ allowHalfOpen: true, noDelay: true }, (sock) => {
      if (this.closing) { sock.destroy(); return; }
      this.accept(sock, sock, where);
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

  private accept(input: net.Socket, output: net.Socket, where: string): NbdConnection {
    const id = this.nextId++;
    const peer = input.remoteAddress !== undefined ? `${input.remoteAddress}:${input.remotePort}` : where;
    const log = this.log.child({ conn: id });
    const c = new NbdConnection(this, input, output, id, log);
    this.conns.add(c);
    log.debug('connection', { peer });
    c.start();
    return c;
  }
}

/** Removes `path` if it is a socket nobody listens on; throws if a server answers or it is not a socket. */
async function removeStaleSocket(path: string): Promise<void> {
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
  unlinkSync(path);
}
