/**
 * The HTTP endpoint of `zdedup serve`: read-only, loopback by default.
 *
 *   GET /         the live dashboard (dashboard.ts: self-contained, charts by uPlot, fed by /events)
 *   GET /events   server-sent events: the /stats document plus time_ms, about once a second (events.ts)
 *   GET /stats    JSON: { version, pid, uptime_seconds, store: {every PageStore stat},
 *                        exports: [per-export info], nbd: {server counters, latency histograms},
 *                        process: {rss_bytes, heap_used_bytes, external_bytes, array_buffers_bytes} }
 *                 process.rss_bytes beside store.pool_total_size + store.metadata_bytes shows what
 *                 the runtime itself costs.
 *   GET /metrics  Prometheus text by Prometheus conventions (metrics.ts): counters as
 *                 zdedup_<stat>_total, sizes as _bytes gauges, latency as histograms.
 *   GET /assets/* the dashboard's script, styles and chart library
 *
 * Only GET and HEAD are answered (405 otherwise): nothing here changes the store. Stats are read
 * when a request arrives, or once a tick while someone watches /events; no timer runs otherwise.
 *
 * Who may connect. HTTP here has neither TLS nor authentication, so, like NBD over TCP, a
 * non-loopback address is an explicit choice: listen() refuses one unless `insecure` is set, and
 * logs a warning when it is. On loopback, requests whose Host header names anything but a
 * loopback address are refused (403): a web page elsewhere cannot read the stats through a DNS
 * name rebound to 127.0.0.1.
 */
import http from 'node:http';
import { isIP, type AddressInfo } from 'node:net';
import { ZdedupError } from '../../core/errors.js';
import type { PageStore } from '../../core/page-store.js';
import type { Logger } from '../log.js';
import type { NbdServer } from '../nbd/server.js';
import { loadDashboardAssets, type Asset } from './dashboard.js';
import { StatsEvents } from './events.js';
import { StatsMetrics } from './metrics.js';

export interface HttpOptions {
  /** Address to bind; a non-loopback one needs `insecure`. */
  host: string;
  port: number;
  store: Pick<PageStore, 'stats'>;
  nbd: Pick<NbdServer, 'exportInfo' | 'counters'>;
  log: Logger;
  version: string;
  /** Allow a non-loopback `host` (no TLS, no authentication: a trusted network only). Default false. */
  insecure?: boolean;
  /** Milliseconds between /events frames. Default 1000. */
  eventIntervalMs?: number;
  /** /events subscribers allowed at once. Default 16. */
  maxEventClients?: number;
}

export interface StatsDocument {
  version: string;
  pid: number;
  uptime_seconds: number;
  store: Record<string, number>;
  exports: ReturnType<NbdServer['exportInfo']>;
  nbd: Record<string, unknown>;
  process: { rss_bytes: number; heap_used_bytes: number; external_bytes: number; array_buffers_bytes: number };
}

/** Sent with the dashboard: everything from this server, nothing inline, nothing framed. */
const PAGE_HEADERS = {
  'content-security-policy': "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-cache',
};

export class StatsHttpServer {
  private readonly server: http.Server;
  private readonly metrics = new StatsMetrics();
  private readonly events: StatsEvents;
  private readonly assets: Map<string, Asset>;
  private readonly assetsError: string | null;
  private readonly started = Date.now();
  private loopbackOnly = true;

  constructor(private readonly o: HttpOptions) {
    this.events = new StatsEvents({
      intervalMs: o.eventIntervalMs ?? 1000,
      maxClients: o.maxEventClients ?? 16,
      snapshot: () => this.stats(),
    });
    const a = loadDashboardAssets();
    this.assets = a.assets;
    this.assetsError = a.error;
    if (a.error !== null) o.log.warn('dashboard unavailable', { cause: a.error });
    this.server = http.createServer((req, res) => { void this.handle(req, res); });
  }

  /** Starts listening; returns the bound port (useful with port 0). */
  async listen(): Promise<number> {
    const loopback = isLoopbackHost(this.o.host);
    if (!loopback && this.o.insecure !== true) {
      throw new ZdedupError('ERR_INVALID_ARGUMENT',
        `--http ${this.o.host}:${this.o.port} is not a loopback address; HTTP has no TLS or authentication, ` +
        'so serving /stats and the dashboard beyond this machine needs --insecure (a trusted network only)');
    }
    if (!loopback) this.o.log.warn('HTTP served beyond loopback without TLS or authentication', { host: this.o.host, port: this.o.port });
    this.loopbackOnly = loopback;
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen({ host: this.o.host, port: this.o.port }, () => { this.server.off('error', reject); resolve(); });
    });
    return (this.server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    this.events.close();
    await new Promise<void>((r) => { this.server.close(() => r()); this.server.closeAllConnections(); });
  }

  /** The /stats document. */
  stats(): StatsDocument {
    return {
      version: this.o.version,
      pid: process.pid,
      uptime_seconds: Math.round((Date.now() - this.started) / 1000),
      store: this.o.store.stats() as unknown as Record<string, number>,
      exports: this.o.nbd.exportInfo(),
      nbd: this.o.nbd.counters.toJSON(),
      process: processMemory(),
    };
  }

  /** /events subscribers now, and frames skipped for slow ones (tests, diagnostics). */
  eventStats(): { subscribers: number; skipped_frames: number } {
    return { subscribers: this.events.subscribers, skipped_frames: this.events.skippedFrames };
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0]!;
    try {
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD' }).end();
        return;
      }
      if (this.loopbackOnly && !isLoopbackHostHeader(req.headers.host)) {
        res.writeHead(403, { 'content-type': 'text/plain' }).end('forbidden: this server answers to loopback host names only\n');
        return;
      }
      if (path === '/stats') {
        const body = JSON.stringify(this.stats(), null, 2) + '\n';
        res.writeHead(200, { 'content-type': 'application/json' }).end(body);
      } else if (path === '/metrics') {
        const body = await this.metrics.render(this.stats());
        res.writeHead(200, { 'content-type': this.metrics.contentType }).end(body);
      } else if (path === '/events') {
        if (req.method === 'HEAD') res.writeHead(200, { 'content-type': 'text/event-stream' }).end();
        else this.events.subscribe(req, res);
      } else if (path === '/' || path === '/index.html' || path.startsWith('/assets/')) {
        const a = this.assets.get(path === '/index.html' ? '/' : path);
        if (a !== undefined) {
          res.writeHead(200, { 'content-type': a.type, ...PAGE_HEADERS }).end(a.body);
        } else if (this.assetsError !== null) {
          res.writeHead(503, { 'content-type': 'text/plain' }).end(`dashboard unavailable: ${this.assetsError}\n`);
        } else {
          res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
        }
      } else {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try / (dashboard), /stats, /metrics or /events\n');
      }
    } catch (e) {
      this.o.log.error('http request failed', { path, cause: e });
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('internal error\n');
    }
  }
}

/** 127.0.0.0/8, ::1 (also as ::ffff:127.x) and "localhost". */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost' || h.endsWith('.localhost')) return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (isIP(h) === 6) return h === '::1' || /^::ffff:127\./.test(h) || h === '0:0:0:0:0:0:0:1';
  return false;
}

/** A Host header naming a loopback address (any port); absent (HTTP/1.0) counts as loopback. */
function isLoopbackHostHeader(host: string | undefined): boolean {
  if (host === undefined || host === '') return true;
  const m = /^(\[[^\]]+\]|[^:]+)(?::\d+)?$/.exec(host);
  return m !== null && isLoopbackHost(m[1]!);
}

function processMemory(): StatsDocument['process'] {
  const m = process.memoryUsage();
  return { rss_bytes: m.rss, heap_used_bytes: m.heapUsed, external_bytes: m.external, array_buffers_bytes: m.arrayBuffers };
}
