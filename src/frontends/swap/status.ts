/**
 * `zdedup swap status`: what is attached (from the state files), how much of it the kernel uses
 * (/proc/swaps), and what it costs in the store (the server's HTTP /stats).
 *
 * Ratios are the store's own (compression_ratio, dedup_ratio, effective_ratio); the one figure
 * computed here is ram_per_swapped_byte = pool_total_size / swap used, i.e. how much RAM the
 * server spends per byte the kernel believes it has swapped out (< 1 is a saving). It counts the
 * whole store, so it is exact only when this export is the server's only user.
 */
import { readFileSync } from 'node:fs';
import { listStates, type SwapState } from './state.js';

export interface ProcSwap {
  filename: string;
  type: string;
  size_bytes: number;
  used_bytes: number;
  priority: number;
}

/** Parses /proc/swaps (sizes there are KiB). */
export function readProcSwaps(text?: string): ProcSwap[] {
  let t = text;
  if (t === undefined) {
    try { t = readFileSync('/proc/swaps', 'utf8'); } catch { return []; }
  }
  const out: ProcSwap[] = [];
  for (const line of t.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 5) continue;
    // a filename with spaces is written with \040; fields are whitespace separated
    out.push({
      filename: f[0]!.replace(/\\040/g, ' '),
      type: f[1]!,
      size_bytes: Number(f[2]) * 1024,
      used_bytes: Number(f[3]) * 1024,
      priority: Number(f[4]),
    });
  }
  return out;
}

/**
 * The store figures `status` shows, in this order, when the server reports them. The names are the
 * store's counters exactly as /stats has them (PageStoreStats): a name /stats does not have is never
 * shown, silently (a test checks every one against a real store).
 */
export const SHOWN_STATS = [
  'stored_pages', 'zero_pages', 'same_filled_pages', 'duplicate_pages', 'unique_objects',
  'pool_total_size', 'logical_bytes', 'compressed_bytes', 'metadata_bytes',
  'compression_ratio', 'dedup_ratio', 'effective_ratio', 'pool_limit_hit', 'reject_reclaim_fail', 'reject_alloc_fail',
] as const;

/** Normalises "ADDR:PORT", ":PORT", "PORT" or a full URL to the /stats URL. */
export function statsUrl(http: string): string {
  if (/^https?:\/\//.test(http)) return new URL('/stats', http).toString();
  if (/^\d+$/.test(http)) return `http://127.0.0.1:${http}/stats`;
  if (http.startsWith(':')) return `http://127.0.0.1${http}/stats`;
  return `http://${http}/stats`;
}

export type StatsResult = { ok: true; stats: Record<string, unknown> } | { ok: false; error: string };

/** GETs the server's /stats; a server that is down or slow is a result, not an exception. */
export async function fetchStats(http: string, timeoutMs = 3000): Promise<StatsResult> {
  const url = statsUrl(http);
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    if (!res.ok) return { ok: false, error: `${url}: HTTP ${res.status}` };
    const body = (await res.json()) as unknown;
    if (typeof body !== 'object' || body === null) return { ok: false, error: `${url}: not a JSON object` };
    // tolerate {"store": {...}} as well as a flat object of store stats
    const b = body as Record<string, unknown>;
    const stats = typeof b['store'] === 'object' && b['store'] !== null && !('stored_pages' in b) ? (b['store'] as Record<string, unknown>) : b;
    return { ok: true, stats };
  } catch (e) {
    return { ok: false, error: `${url}: ${(e as Error).message}` };
  }
}

export interface SwapStatusEntry {
  id: string | null;
  socket: string | null;
  export: string | null;
  method: string | null;
  device: string | null;
  /** Listed in /proc/swaps right now. */
  active: boolean;
  size_bytes: number | null;
  used_bytes: number | null;
  priority: number | null;
  http: string | null;
  stats: Record<string, number> | null;
  stats_error: string | null;
  ram_per_swapped_byte: number | null;
}

export async function swapStatus(stateDir: string, httpOverride: string | null): Promise<SwapStatusEntry[]> {
  const swaps = readProcSwaps();
  const states: Array<SwapState | null> = listStates(stateDir);
  if (states.length === 0 && httpOverride !== null) states.push(null); // stats of a server with nothing attached
  const out: SwapStatusEntry[] = [];
  for (const s of states) {
    const sw = s?.device ? swaps.find((p) => p.filename === s.device) : undefined;
    const http = httpOverride ?? s?.http ?? null;
    let stats: Record<string, number> | null = null;
    let statsError: string | null = null;
    if (http !== null) {
      const r = await fetchStats(http);
      if (r.ok) {
        stats = {};
        for (const k of SHOWN_STATS) if (typeof r.stats[k] === 'number') stats[k] = r.stats[k];
      } else {
        statsError = r.error;
      }
    }
    const pool = stats?.['pool_total_size'];
    out.push({
      id: s?.id ?? null,
      socket: s?.socket ?? null,
      export: s?.export ?? null,
      method: s?.method ?? null,
      device: s?.device ?? null,
      active: sw !== undefined,
      size_bytes: sw?.size_bytes ?? null,
      used_bytes: sw?.used_bytes ?? null,
      priority: sw?.priority ?? null,
      http,
      stats,
      stats_error: statsError,
      ram_per_swapped_byte: pool !== undefined && sw !== undefined && sw.used_bytes > 0 ? pool / sw.used_bytes : null,
    });
  }
  return out;
}
