/**
 * Background policy of the page store: writeback, segment cleaning, compaction. The mechanisms
 * live beside the data they touch (PageStore.evictOldest, DiskTier.clean, ZsPool.compact); this
 * file decides when to run them and how much at a time. The CLI only starts and stops it.
 *
 *   kick() / 1 s timer ──▶ step() ──▶ one bounded piece of work ──▶ setImmediate (urgent) or
 *                                                                     200 ms (not urgent) ──▶ step() ...
 *                           │ 1. pool over its target?   drop ephemeral pages (coldest first), else
 *                           │                             evict ~256 KiB from the LRU tail, or
 *                           │                             compact when evictions left holes
 *                           │ 2. tier short of free segments?  clean the best segment
 *                           │ 2b. cold tier: garbage in cold segments? clean one;
 *                           │     idle RAM objects? recompress one batch of groups (cold.ts)
 *                           │ 3. pool sparse after frees?      one compaction step
 *                           └─ nothing to do ──▶ idle until the next kick or tick
 *
 * Every step is bounded (about 256 KiB of objects written back, 2 Ki objects compacted, one segment cleaned, one compaction step
 * of at most 16 Ki objects), and steps are separated by setImmediate, so NBD requests are served
 * between them: no operation waits for a whole writeback or cleaning pass.
 *
 * Policies (measured choices are in docs/ARCHITECTURE.md):
 * - Writeback target: zswap's hysteresis. Once the pool hits its limit, the writer runs until
 *   pool_total_size is at or below the accept threshold (90% of the limit by default). Evicting
 *   objects frees zspage slots, not arenas, so when the objects held in RAM are already below the
 *   target the writer compacts instead of evicting more.
 * - Cleaning: LFS cost-benefit, (1 - u) * age / (1 + u) with u = live / used bytes of a sealed
 *   segment, whenever free segments fall under the tier's low-water mark.
 * - Compaction: when frees waste more than 8 MiB and 1/8 of the pool (PageStore.maybeCompact).
 */
import type { Tier } from '../tiers/tier.js';
import type { PageStore } from './page-store.js';
import { reclaimMemory } from './reclaim.js';

export type MaintenanceEvents = (level: 'debug' | 'info' | 'warn' | 'error', msg: string, fields: Record<string, unknown>) => void;

/** Object bytes written back per step (~256 KiB: about 1 ms of appends and checksums). */
const EVICT_STEP_BYTES = 256 << 10;
/**
 * Objects moved per compaction step. Measured: a 16 Ki-object step (the pool's default) took
 * ~7 ms and showed up as the p99 of disk-hit reads served meanwhile; 2 Ki objects keep a step
 * near 1 ms (plus the pool's O(ids) scan, ~4 ms per million objects).
 */
const COMPACT_STEP_OBJECTS = 2048;
/** Pause between steps of work that is not urgent (the old serve loop's compaction gap). */
const IDLE_STEP_GAP_MS = 200;
/** Steps longer than this are logged (debug): they delay requests waiting behind them. */
const SLOW_STEP_MS = 2;
/** How often the background timer looks for work. */
const TICK_MS = 1000;
/** RAM the store gave up (pool arenas, cold segments) that is worth a full GC to unmap (reclaim.ts). */
const RECLAIM_BYTES = 8 << 20;
/** At most one reclaiming collection per this interval. */
const RECLAIM_INTERVAL_MS = 5000;
/** A writer that found the tier busy waits at most this long before looking again. */
const BUSY_WAIT_MS = 200;

/** LFS's cost-benefit score of cleaning a segment. */
export function costBenefit(live: number, used: number, ageSeconds: number): number {
  const u = used > 0 ? live / used : 0;
  return ((1 - u) * (ageSeconds + 1)) / (1 + u);
}

export class Maintenance {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | null = null;
  private again = false;
  private stopped = false;
  private stalled: string | null = null; // the writeback episode being reported, if any
  /** Most RAM held (pool + cold segments) since the last reclaiming collection. */
  private heldPeak = 0;
  private lastReclaim = 0;
  private reclaimTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly store: PageStore,
    private readonly tier: Tier | null,
    private readonly events: MaintenanceEvents,
    background: boolean,
  ) {
    this.setBackground(background);
  }

  setBackground(on: boolean): void {
    if (on && this.timer === undefined && !this.stopped) {
      this.timer = setInterval(() => this.kick(), TICK_MS);
      this.timer.unref();
    } else if (!on && this.timer !== undefined) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }

  /** Something changed (the pool hit its limit, a store is waiting): look for work soon. */
  kick(): void {
    if (this.stopped || this.timer === undefined) return;
    if (this.running) { this.again = true; return; }
    this.running = this.loop().finally(() => { this.running = null; });
  }

  /** Runs steps until there is no work left (tests and shutdown). Never two loops at once. */
  async settle(): Promise<void> {
    for (;;) {
      if (this.running) { await this.running; continue; }
      this.running = this.drain().finally(() => { this.running = null; });
      await this.running;
      return;
    }
  }

  private async drain(): Promise<void> {
    while (!this.stopped && await this.step()) { /* next step */ }
  }

  /**
   * For a store waiting for tier room: resolves when a write buffer may be free again. Without
   * the background loop (tests), runs one step itself so the wait makes progress.
   */
  async whenRoom(): Promise<void> {
    if (this.tier === null) return;
    const writable = this.tier.whenWritable(); // registered first: a write finishing during the step is not missed
    if (this.timer === undefined && !this.running && !this.stopped) {
      this.running = this.step().then(() => undefined).finally(() => { this.running = null; });
      await this.running;
    }
    // Not unref'd: a store is waiting, and this timer is what re-checks when nothing else runs.
    let t: NodeJS.Timeout | undefined;
    await Promise.race([writable, new Promise<void>((res) => { t = setTimeout(res, BUSY_WAIT_MS); })]);
    clearTimeout(t);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.reclaimTimer);
    this.setBackground(false);
    this.timer = undefined;
    if (this.running) await this.running;
  }

  private async loop(): Promise<void> {
    do {
      this.again = false;
      while (!this.stopped && await this.step()) {
        // Urgent work (the pool over its target, free segments running out) goes step after step,
        // with only the requests already queued served in between. Anything else (compaction of a
        // pool that is within its target) waits IDLE_STEP_GAP_MS between steps, so a request
        // rarely meets a step: measured, back-to-back compaction steps after a writeback burst put
        // RAM-hit p99 at 1.2 ms against 0.2 ms for the same reads on an idle store.
        if (this.urgent()) await new Promise<void>((r) => setImmediate(r));
        else await new Promise<void>((r) => { const t = setTimeout(r, IDLE_STEP_GAP_MS); t.unref(); });
      }
    } while (this.again && !this.stopped);
    this.maybeReclaim();
  }

  /**
   * After a run of steps that gave up at least RECLAIM_BYTES of arenas or cold segments: one full
   * collection, so their memory is unmapped now rather than whenever V8 next collects (reclaim.ts).
   * At most one per RECLAIM_INTERVAL_MS; a later one is scheduled instead.
   */
  private maybeReclaim(): void {
    const held = this.store.heldBytes();
    if (this.heldPeak - held < RECLAIM_BYTES || this.reclaimTimer !== undefined || this.stopped) return;
    const wait = this.lastReclaim + RECLAIM_INTERVAL_MS - Date.now();
    const run = (): void => {
      this.reclaimTimer = undefined;
      this.lastReclaim = Date.now();
      this.heldPeak = this.store.heldBytes();
      const ms = reclaimMemory();
      if (ms !== null) this.events('debug', 'freed memory reclaimed', { gc_ms: ms });
    };
    if (wait <= 0) { run(); return; }
    this.reclaimTimer = setTimeout(run, wait);
    this.reclaimTimer.unref();
  }

  /**
   * True when work must not wait: stores are bypassing RAM or free segments are running out — or
   * a cold pass is under way (each step is ~1-3 ms of zstd; 200 ms gaps would stretch a pass over
   * a large store to minutes while the pool holds the hot copies).
   */
  private urgent(): boolean {
    if (this.stepKind === 'cold-pass' || this.stepKind === 'cold-clean') return true;
    const tier = this.tier;
    return tier !== null && (this.store.poolOverTarget() || tier.needsCleaning());
  }

  /** One bounded piece of work; returns true when it did something (call again). */
  async step(): Promise<boolean> {
    const t0 = performance.now();
    this.heldPeak = Math.max(this.heldPeak, this.store.heldBytes());
    this.stepKind = 'idle';
    const did = await this.stepInner();
    const ms = performance.now() - t0;
    if (ms > SLOW_STEP_MS) this.events('debug', 'slow maintenance step', { kind: this.stepKind, ms: Math.round(ms * 10) / 10 });
    return did;
  }

  /** What the current step did (for the slow-step log). */
  private stepKind = 'idle';

  private async stepInner(): Promise<boolean> {
    const s = this.store;
    const tier = this.tier;
    try {
      // 1. Writeback: ephemeral pages are dropped first; then cold groups are written back
      // (colder than anything in the LRU), then the LRU tail.
      if (tier !== null && s.poolOverTarget()) {
        if (s.poolObjectBytes() <= s.poolTargetBytes() * 0.95) {
          this.stepKind = 'writeback-compact';
          const r = s.compact(COMPACT_STEP_OBJECTS);
          if (r.moved_objects > 0 || r.freed_arenas > 0 || r.moved_zspages > 0) return true;
        }
        // Ephemeral pages go first, coldest first: nothing persistent is written back while any remain.
        if (s.ephemeralPages() > 0) {
          this.stepKind = 'ephemeral-drop';
          s.dropEphemeral(EVICT_STEP_BYTES);
          return true;
        }
        if (s.coldObjects() > 0) {
          this.stepKind = 'writeback-cold';
          const r = s.evictCold(EVICT_STEP_BYTES);
          if (r === 'done') { this.recovered(); return true; }
          if (r !== 'empty') return this.writebackBlocked(r);
        }
        this.stepKind = 'writeback';
        const r = s.evictOldest(EVICT_STEP_BYTES);
        if (r === 'done') { this.recovered(); return true; }
        if (r !== 'empty') return this.writebackBlocked(r);
        // 'empty': nothing left in RAM to write; fall through to compaction.
      }
      // 2. Cleaning.
      if (tier !== null && tier.needsCleaning() && await this.cleanOne()) return true;
      // 2b. The cold tier: reclaim garbage in cold segments, then recompress idle objects in groups.
      this.stepKind = 'cold-clean';
      if (s.coldCleanStep()) return true;
      this.stepKind = 'cold-pass';
      if (s.coldPassStep()) return true;
      // 3. Compaction.
      this.stepKind = 'compact';
      const c = s.maybeCompact(undefined, undefined, COMPACT_STEP_OBJECTS);
      if (c !== null && (c.moved_objects > 0 || c.moved_zspages > 0 || c.freed_arenas > 0)) {
        this.events('info', 'compacted', { ...c, pool_total_size: s.stats().pool_total_size });
        return true;
      }
      return false;
    } catch (e) {
      this.events('error', 'maintenance step failed', { cause: e });
      return false;
    }
  }

  /** A writeback step that could not write: wait for the tier, or clean, or report the stall. */
  private async writebackBlocked(r: 'busy' | 'full' | 'failed'): Promise<boolean> {
    const tier = this.tier!;
    if (r === 'busy') {
      if (tier.needsCleaning() && await this.cleanOne()) return true;
      let t: NodeJS.Timeout | undefined;
      await Promise.race([tier.whenWritable(), new Promise<void>((res) => { t = setTimeout(res, BUSY_WAIT_MS); t.unref(); })]);
      clearTimeout(t);
      return !this.stopped;
    }
    if (tier.needsCleaning() && await this.cleanOne()) return true;
    this.stall(r === 'full' ? 'disk tier full' : 'disk tier failing');
    return false;
  }

  private async cleanOne(): Promise<boolean> {
    const tier = this.tier!;
    this.stepKind = 'clean';
    const [seg] = tier.cleaningCandidates(costBenefit, 1);
    if (seg === undefined) return false;
    const r = await tier.clean(seg, this.store.cleaningOwner);
    this.events('debug', 'cleaned segment', { segment: seg, ...r });
    return r.outcome === 'done' || r.moved_records > 0;
  }

  /** Logs a writeback stall once per episode. */
  private stall(why: string): void {
    if (this.stalled === why) return;
    this.stalled = why;
    const st = this.store.stats();
    this.events('warn', 'writeback stopped: stores that need the disk tier are refused (ENOSPC) until space is freed', {
      why, pool_total_size: st.pool_total_size, disk_bytes: st.disk_bytes, disk_live_bytes: st.disk_live_bytes,
    });
  }

  private recovered(): void {
    if (this.stalled === null) return;
    this.events('info', 'writeback resumed', { after: this.stalled });
    this.stalled = null;
  }
}
