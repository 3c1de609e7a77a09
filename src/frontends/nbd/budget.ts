/**
 * The buffer budget: one bound, shared by every connection of a server, on the bytes held for
 * request payloads and READ replies. Without it memory grows with the clients: 64 connections each
 * asking for a 32 MiB READ and never reading the reply held 2.1 GB.
 *
 * What is charged (connection.ts):
 *   READ        its whole reply buffer, from before it is allocated until the socket has taken the
 *               last byte (the write callback); in flight, the charge travels with the request
 *   WRITE       its payload when longer than the connection's reused scratch buffer, from before
 *               the payload is received until the store has taken it
 * Not charged: headers, small replies (bounded per connection by the output high-water mark) and
 * WRITE payloads that fit the per-connection scratch buffer.
 *
 * A request whose charge does not fit waits, in arrival order (FIFO, so a 32 MiB READ is not
 * starved by a stream of small ones), with its connection parked: its socket is not read and
 * nothing is allocated for it. Space comes back as replies reach the kernel and writes reach the
 * store. A client that stops reading its replies holds its share until the idle timeout closes it
 * (server.ts), which is what makes waiting safe.
 *
 * Invariants:
 * - used ≤ limit at all times; limit ≥ MIN_BUDGET, so any single legal request fits an empty budget.
 * - Every charge is given back exactly once: by the connection as its buffers are released, or all
 *   at once when it closes (holder.held).
 * - A holder is in `waiters` at most once (a waiting connection is parked and asks for nothing else).
 * - granted() is called on a later microtask, never inside give(): the connection that gave space
 *   back is still in the middle of its own bookkeeping.
 *
 * After a burst: the buffers given back are garbage, but V8 collects them only when it next needs
 * to, and an idle server allocates nothing, so their memory (mmapped: glibc's threshold is pinned
 * at 512 KiB, codec/native.ts) would stay in RSS indefinitely. When the budget empties after
 * holding at least RECLAIM_AFTER bytes, `onDrained` runs once (server.ts schedules one full
 * collection, at most every few seconds, which unmaps them).
 */
import { ZdedupError } from '../../core/errors.js';
import type { NbdCounters } from './counters.js';
import { MAX_PAYLOAD } from './protocol.js';

/** Smallest budget accepted: one maximal request plus its reply header. */
export const MIN_BUDGET = MAX_PAYLOAD + 64 * 1024;
/** Default: eight maximal (32 MiB) requests at once, or thousands of ordinary ones. */
export const DEFAULT_BUDGET = 256 * 1024 * 1024;
/** A budget that held at least this much and is empty again calls onDrained. */
export const RECLAIM_AFTER = 32 * 1024 * 1024;

/** A connection as the budget sees it. */
export interface BudgetHolder {
  /** Bytes this holder is charged now (maintained by the budget on take/grant, by the holder on give). */
  held: number;
  /** The charge it waited for is now reserved (held already includes it). Called on a microtask. */
  granted(): void;
}

export class BufferBudget {
  private used = 0;
  /** Most held since the budget was last empty. */
  private highWater = 0;
  private readonly waiters: { holder: BudgetHolder; bytes: number }[] = [];
  /** Called when the budget empties after holding at least RECLAIM_AFTER bytes. */
  onDrained: (() => void) | undefined;

  constructor(readonly limit: number, private readonly counters: NbdCounters) {
    if (!(limit >= MIN_BUDGET)) {
      throw new ZdedupError('ERR_INVALID_ARGUMENT', `the buffer budget must be at least ${MIN_BUDGET} bytes (one 32 MiB request), got ${limit}`);
    }
  }

  get inUse(): number { return this.used; }

  /**
   * Reserves `bytes` for `holder` if they fit and nobody is waiting ahead; returns true then.
   * Otherwise queues the holder (granted() follows) and returns false.
   */
  take(holder: BudgetHolder, bytes: number): boolean {
    if (this.waiters.length === 0 && this.used + bytes <= this.limit) {
      this.reserve(holder, bytes);
      return true;
    }
    this.counters.buffer_waits++;
    this.waiters.push({ holder, bytes });
    return false;
  }

  /** Gives back `bytes` of `holder`'s charge. */
  give(holder: BudgetHolder, bytes: number): void {
    if (bytes === 0) return;
    holder.held -= bytes;
    this.used -= bytes;
    this.counters.buffered_bytes = this.used;
    this.wake();
    if (this.used === 0) {
      if (this.highWater >= RECLAIM_AFTER) this.onDrained?.();
      this.highWater = 0;
    }
  }

  /** The holder is gone: give back everything it holds and drop it from the queue. */
  forget(holder: BudgetHolder): void {
    const i = this.waiters.findIndex((w) => w.holder === holder);
    if (i >= 0) this.waiters.splice(i, 1);
    if (holder.held !== 0) this.give(holder, holder.held);
    else if (i === 0) this.wake();
  }

  private reserve(holder: BudgetHolder, bytes: number): void {
    holder.held += bytes;
    this.used += bytes;
    if (this.used > this.highWater) this.highWater = this.used;
    this.counters.buffered_bytes = this.used;
  }

  private wake(): void {
    while (this.waiters.length > 0 && this.used + this.waiters[0]!.bytes <= this.limit) {
      const w = this.waiters.shift()!;
      this.reserve(w.holder, w.bytes);
      queueMicrotask(() => w.holder.granted());
    }
  }
}
