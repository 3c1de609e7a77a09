/**
 * /metrics: the /stats document in Prometheus text format, by Prometheus' naming conventions.
 *
 *   store stats   counters (stat-model STORE_COUNTERS) as zdedup_<stat>_total, type counter;
 *                 everything else a gauge: zdedup_<stat>, sizes with _bytes (zdedup_pool_total_size_bytes)
 *   NBD counters  zdedup_nbd_<name>_total (zdedup_nbd_connections_active is the one gauge),
 *                 zdedup_nbd_requests_total{command}, zdedup_nbd_request_errors_total{errno}
 *   latency       zdedup_nbd_request_duration_seconds{kind="read_ram|read_tier|write|other"},
 *                 a histogram, when the server reports one
 *   exports       zdedup_export_size_bytes{export}, zdedup_export_pages{export,kind="data|zero|hole"},
 *                 zdedup_export_pool_bytes{export}, zdedup_export_max_pool_bytes{export},
 *                 cache exports: zdedup_export_cache_<counter>_total{export}
 *   process       prom-client's default process and Node metrics under zdedup_
 *
 * One /stats snapshot is taken per scrape and every family reads that same snapshot, so a scrape
 * is consistent (stored_pages and its breakdown come from one moment). Families for stats that
 * appear later (a tier switched on) are registered the first time they are seen. prom-client does
 * the text encoding; the histograms are precomputed by the NBD server, so they are small custom
 * metric objects that hand prom-client their samples.
 */
import { Counter, Gauge, Registry, collectDefaultMetrics, type Metric } from 'prom-client';
import type { StatsDocument } from './server.js';
import {
  NBD_LABELLED_TOTALS, cumulative, isPlainName, latencyOf, nbdHelp, promNbdName, promStoreName,
  storeHelp, storeStatKind, type LatencyJson,
} from './stat-model.js';

/** Per cache export (--export NAME:cache=PATH): its counters, as zdedup_export_cache_<name>_total{export}. */
const CACHE_COUNTERS = [
  ['file_reads', 'Reads of the cache export\'s image file (runs of pages the cache missed)'],
  ['file_read_bytes', 'Bytes read from the cache export\'s image file to serve reads'],
  ['file_write_bytes', 'Bytes written to the cache export\'s image file'],
  ['cache_hit_pages', 'Pages of reads served from the cache'],
  ['cache_miss_pages', 'Pages of reads the cache missed (read from the file, then cached)'],
  ['scan_bytes', 'Bytes read by the identity scan (images of equal size, once)'],
] as const;

export class StatsMetrics {
  readonly registry = new Registry();
  private readonly families = new Map<string, Gauge | Counter>();
  private latency: Record<string, LatencyJson> = {};

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'zdedup_' });
    this.registry.registerMetric(new PrecomputedHistogram(
      'zdedup_nbd_request_duration_seconds',
      'NBD request service time in seconds (request complete in the parser to reply queued), by kind: ' +
      'read_ram = READ served from RAM, read_tier = READ that waited for a lower tier, write = WRITE and WRITE_ZEROES, ' +
      'other = FLUSH, TRIM, CACHE, BLOCK_STATUS and refused requests',
      'kind', () => this.latency,
    ) as unknown as Metric);
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The text exposition for one /stats snapshot. */
  async render(doc: StatsDocument): Promise<string> {
    this.sync(doc);
    return this.registry.metrics();
  }

  private sync(doc: StatsDocument): void {
    for (const [k, v] of Object.entries(doc.store)) {
      if (typeof v !== 'number' || !isPlainName(k)) continue;
      this.set(promStoreName(k), storeHelp(k), storeStatKind(k), v);
    }
    for (const [k, v] of Object.entries(doc.nbd)) {
      if (typeof v !== 'number' || !isPlainName(k) || NBD_LABELLED_TOTALS.has(k)) continue;
      const name = promNbdName(k);
      this.set(name, nbdHelp(k), name.endsWith('_total') ? 'counter' : 'gauge', v);
    }
    const requests = (doc.nbd.requests ?? {}) as Record<string, number>;
    const requestsFamily = this.labelled('zdedup_nbd_requests_total', 'NBD requests by command', 'counter', ['command']);
    for (const [cmd, n] of Object.entries(requests)) setValue(requestsFamily, n, { command: cmd });
    const errors = (doc.nbd.errors ?? {}) as Record<string, number>;
    const errorsFamily = this.labelled('zdedup_nbd_request_errors_total', 'NBD error replies by errno', 'counter', ['errno']);
    for (const [errno, n] of Object.entries(errors)) setValue(errorsFamily, n, { errno });
    this.latency = latencyOf(doc.nbd);

    const size = this.labelled('zdedup_export_size_bytes', 'Export size in bytes', 'gauge', ['export']);
    const pages = this.labelled('zdedup_export_pages', 'Export pages by kind: data (stored), zero, hole (never written or trimmed)', 'gauge', ['export', 'kind']);
    const poolBytes = this.labelled('zdedup_export_pool_bytes', 'RAM pool bytes held by objects the export created (exports with pool quotas only)', 'gauge', ['export']);
    const poolMax = this.labelled('zdedup_export_max_pool_bytes', 'The export\'s pool quota in bytes (0 = none)', 'gauge', ['export']);
    for (const e of doc.exports) {
      setValue(size, e.size, { export: e.name });
      if (typeof e.pool_bytes === 'number') setValue(poolBytes, e.pool_bytes, { export: e.name });
      if (typeof e.max_pool_bytes === 'number') setValue(poolMax, e.max_pool_bytes, { export: e.name });
      for (const kind of ['data', 'zero', 'hole'] as const) {
        const n = e[`${kind}_pages`];
        if (typeof n === 'number') setValue(pages, n, { export: e.name, kind });
      }
      if (e.cache !== undefined) {
        for (const [k, help] of CACHE_COUNTERS) {
          setValue(this.labelled(`zdedup_export_cache_${k}_total`, help, 'counter', ['export']), e.cache[k], { export: e.name });
        }
      }
    }
  }

  private set(name: string, help: string, kind: 'counter' | 'gauge', v: number): void {
    setValue(this.labelled(name, help, kind, []), v, undefined);
  }

  /** The family called `name`, registered on first use. */
  private labelled(name: string, help: string, kind: 'counter' | 'gauge', labelNames: string[]): Gauge | Counter {
    let f = this.families.get(name);
    if (f === undefined) {
      f = kind === 'counter'
        ? new Counter({ name, help, labelNames, registers: [this.registry] })
        : new Gauge({ name, help, labelNames, registers: [this.registry] });
      this.families.set(name, f);
    }
    return f;
  }
}

/**
 * Sets a family's sample to an absolute value. A prom-client Counter has no set(): reset the
 * series and add the value (the source is monotonic; a negative value would be a bug upstream
 * and is clamped rather than thrown, so one bad stat cannot take the whole scrape down).
 */
function setValue(f: Gauge | Counter, v: number, labels: Record<string, string> | undefined): void {
  if (f instanceof Gauge) {
    if (labels === undefined) f.set(v); else f.set(labels, v);
    return;
  }
  const x = Math.max(0, v);
  if (labels === undefined) { f.reset(); f.inc(x); return; }
  f.remove(labels);
  f.inc(labels, x);
}

/**
 * A histogram whose buckets are counted elsewhere (NbdCounters): prom-client only formats it.
 * prom-client's Registry reads `name`, `help`, `type` and `get()`; samples carry their own
 * `metricName` (_bucket, _sum, _count) as its own Histogram class does.
 */
class PrecomputedHistogram {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  constructor(
    readonly name: string,
    readonly help: string,
    private readonly label: string,
    private readonly source: () => Record<string, LatencyJson>,
  ) {}

  get(): { name: string; help: string; type: string; aggregator: string; values: { metricName: string; labels: Record<string, string | number>; value: number }[] } {
    const values: { metricName: string; labels: Record<string, string | number>; value: number }[] = [];
    for (const [kind, h] of Object.entries(this.source())) {
      const { le, cum } = cumulative(h);
      for (let i = 0; i < le.length; i++) {
        values.push({ metricName: `${this.name}_bucket`, labels: { [this.label]: kind, le: le[i] === Infinity ? '+Inf' : le[i]! }, value: cum[i]! });
      }
      values.push({ metricName: `${this.name}_sum`, labels: { [this.label]: kind }, value: h.sum_seconds });
      values.push({ metricName: `${this.name}_count`, labels: { [this.label]: kind }, value: cum[cum.length - 1]! });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  reset(): void { /* the counts belong to the NBD server */ }
}
