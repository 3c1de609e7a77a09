/**
 * The HTTP endpoint of `zdedup serve` (loopback by default):
 *   GET /stats    JSON: { version, pid, uptime_seconds, store: {every PageStore stat},
 *                        exports: [per-export info], nbd: {server counters},
 *                        process: {rss_bytes, heap_used_bytes, external_bytes, array_buffers_bytes} }
 *                 process.rss_bytes beside store.pool_total_size + store.metadata_bytes shows what
 *                 the runtime itself costs.
 *   GET /metrics  Prometheus text (prom-client): zdedup_<stat> for every store stat,
 *                 zdedup_nbd_<counter> for the server's counters, zdedup_export_* per export,
 *                 plus prom-client's process metrics under zdedup_.
 * Stats are read when a request arrives (no timers); names are the store's own snake_case names,
 * the same everywhere (STYLE rule 4).
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { PageStore } from '../../core/page-store.js';
import type { Logger } from '../log.js';
import type { NbdServer } from '../nbd/server.js';
import { CMD_NAMES } from '../nbd/protocol.js';

export interface HttpOptions {
  host: string;
  port: number;
  store: PageStore;
  nbd: NbdServer;
  log: Logger;
  version: string;
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

export class StatsHttpServer {
  private readonly server: http.Server;
  private readonly registry = new Registry();
  private readonly storeGauges = new Map<string, Gauge>();
  private readonly started = Date.now();

  constructor(private readonly o: HttpOptions) {
    collectDefaultMetrics({ register: this.registry, prefix: 'zdedup_' });
    this.defineNbdMetrics();
    this.server = http.createServer((req, res) => { void this.handle(req, res); });
  }

  /** Starts listening; returns the bound port (useful with port 0). */
  async listen(): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen({ host: this.o.host, port: this.o.port }, () => { this.server.off('error', reject); resolve(); });
    });
    return (this.server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
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

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    try {
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD' }).end();
        return;
      }
      if (path === '/stats') {
        const body = JSON.stringify(this.stats(), null, 2) + '\n';
        res.writeHead(200, { 'content-type': 'application/json' }).end(body);
      } else if (path === '/metrics') {
        this.updateStoreGauges();
        const body = await this.registry.metrics();
        res.writeHead(200, { 'content-type': this.registry.contentType }).end(body);
      } else {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /stats or /metrics\n');
      }
    } catch (e) {
      this.o.log.error('http request failed', { path, cause: e });
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('internal error\n');
    }
  }

  /** One gauge per store stat, created the first time the stat is seen. */
  private updateStoreGauges(): void {
    const s = this.o.store.stats() as unknown as Record<string, unknown>;
    for (const [k, v] of Object.entries(s)) {
      if (typeof v !== 'number' || !/^[a-z_][a-z0-9_]*$/.test(k)) continue;
      let g = this.storeGauges.get(k);
      if (g === undefined) {
        g = new Gauge({ name: `zdedup_${k}`, help: `PageStore stat ${k}`, registers: [this.registry] });
        this.storeGauges.set(k, g);
      }
      g.set(v);
    }
  }

  private defineNbdMetrics(): void {
    const nbd = this.o.nbd;
    const c = nbd.counters;
    const reg = [this.registry];
    const scalar = (name: keyof typeof c & string, help: string, kind: 'counter' | 'gauge'): void => {
      if (kind === 'gauge') {
        new Gauge({ name: `zdedup_nbd_${name}`, help, registers: reg, collect() { this.set(c[name] as number); } });
      } else {
        new Counter({ name: `zdedup_nbd_${name}_total`.replace(/_total_total$/, '_total'), help, registers: reg,
          collect() { this.reset(); this.inc(c[name] as number); } });
      }
    };
    scalar('connections_accepted', 'NBD connections accepted', 'counter');
    scalar('connections_active', 'NBD connections open now', 'gauge');
    scalar('handshakes_completed', 'connections that entered transmission', 'counter');
    scalar('handshake_aborted', 'connections that ended during the option phase', 'counter');
    scalar('options_refused', 'options answered with an error reply', 'counter');
    scalar('protocol_errors', 'hard disconnects for protocol violations', 'counter');
    scalar('disconnect_mid_request', 'clients gone with a request partly sent', 'counter');
    scalar('bytes_read', 'payload bytes returned by READ', 'counter');
    scalar('bytes_written', 'payload bytes accepted by WRITE', 'counter');
    new Counter({
      name: 'zdedup_nbd_requests_total', help: 'NBD requests by command', labelNames: ['command'], registers: reg,
      collect() {
        this.reset();
        for (let i = 0; i <= CMD_NAMES.length; i++) this.inc({ command: CMD_NAMES[i] ?? 'unknown' }, c.requests[i]!);
      },
    });
    new Counter({
      name: 'zdedup_nbd_request_errors_total', help: 'NBD error replies by errno', labelNames: ['errno'], registers: reg,
      collect() {
        this.reset();
        for (const [k, v] of Object.entries(c.errors)) this.inc({ errno: k }, v);
      },
    });
    new Gauge({
      name: 'zdedup_export_size_bytes', help: 'export size in bytes', labelNames: ['export'], registers: reg,
      collect() { for (const e of nbd.exports) this.set({ export: e.name }, e.size); },
    });
  }
}

function processMemory(): StatsDocument['process'] {
  const m = process.memoryUsage();
  return { rss_bytes: m.rss, heap_used_bytes: m.heapUsed, external_bytes: m.external, array_buffers_bytes: m.arrayBuffers };
}
