/**
 * A full garbage collection on demand, to give freed buffers back to the OS.
 *
 * Pool arenas, cold segments and NBD reply buffers are ArrayBuffers outside the JS heap: when the
 * store drops one (compaction freed an arena, the cold pass emptied the pool, a cold segment was
 * cleaned) its memory is unmapped only when V8 collects the object, and V8 schedules collections
 * by heap growth, not by external memory that went away. Measured after a cold pass over a 661 MB
 * process image: pool_total_size 1 MiB, yet 125 MB of ArrayBuffers still mapped (RSS +128 MiB)
 * until a full collection, which took a few milliseconds on this small heap.
 *
 * Node exposes gc() only under --expose-gc; the flag can be set at run time and the function
 * fetched from a fresh context (V8 installs `gc` in contexts created after the flag is set).
 */
import v8 from 'node:v8';
import vm from 'node:vm';
import { trimMalloc } from '../engine/codec/native.js';

let gcFn: (() => void) | null | undefined;

/** V8's full collection, or null if it cannot be had. */
export function fullGc(): (() => void) | null {
  if (gcFn === undefined) {
    try {
      v8.setFlagsFromString('--expose-gc');
      gcFn = vm.runInNewContext('gc') as () => void;
    } catch {
      gcFn = null;
    }
  }
  return gcFn;
}

/** Delay between the collection and the trim: V8 frees dead ArrayBuffers' memory on a background thread after the GC. */
const TRIM_DELAY_MS = 1000;
let trimTimer: NodeJS.Timeout | undefined;

/**
 * One full collection now, then malloc_trim a moment later: what the dead buffers held goes back
 * to the OS. The trim waits because V8 releases the backing stores of collected ArrayBuffers
 * concurrently, after the collection returns (measured after a cold pass: gc + immediate trim
 * left RSS at 152 MiB, the same trim a second later brought it to 122). Returns the milliseconds
 * the collection took, or null when no collection could be had.
 */
export function reclaimMemory(): number | null {
  const gc = fullGc();
  if (gc === null) return null;
  const t0 = performance.now();
  gc();
  const ms = Math.round((performance.now() - t0) * 10) / 10;
  if (trimTimer === undefined) {
    trimTimer = setTimeout(() => { trimTimer = undefined; trimMalloc(); }, TRIM_DELAY_MS);
    trimTimer.unref();
  }
  return ms;
}

/**
 * A young-generation collection (scavenge) now, if gc() can be had; ~0.1-0.5 ms on this heap.
 *
 * Why: every socket read is a fresh 64 KiB buffer from malloc (Node allocates one per read), dead
 * as soon as its bytes are parsed, but freed only when V8 collects its JS wrapper. V8 collects
 * the young generation by the JS bytes allocated, not by those buffers, so between two
 * scavenges thousands of dead socket chunks pile up in malloc's heap: measured during a 631 MiB
 * nbdcopy write, glibc's [heap] grew from 4.6 to 59-72 MiB (RSS beyond the pool, most of the
 * "runtime overhead"). The NBD connections call this every 2 MiB of input (connection.ts),
 * which bounds that pile by the input between two calls.
 */
export function youngGc(): void {
  const gc = fullGc();
  if (gc !== null) (gc as unknown as (o: { type: 'minor' }) => void)({ type: 'minor' });
}
