/**
 * Growable typed arrays for per-object and per-zspage columns.
 *
 * Columns live on resizable ArrayBuffers (length-tracking views): growing one commits more of an
 * address-space reservation in place — no copy, no stop-the-world pause while a multi-megabyte
 * column is duplicated, and little idle capacity: each step adds max(4096, min(1/32 of the column,
 * 64 Ki)) entries, so at most ~3% of a column (and never more than 64 Ki entries) is unused (a
 * 1.5x copy-and-double scheme leaves up to a third idle, and metadata_bytes counts it). A step
 * costs a few microseconds (the pages are committed, not touched), plus writing the new entries
 * when `fill` is not 0 (256 KiB at most for a u32 column: ~0.1 ms).
 *
 * Reservations: a column starts in a 64 KiB one (small stores and tests reserve little address
 * space) and, the one time it outgrows it, moves to a reservation of the maximum, 4 GiB - 1 (the
 * V8 limit for one buffer): one copy of at most 64 KiB (~0.05 ms), and never a copy again. The
 * old scheme (16x larger each time: 1, 16, 256 MiB) copied 16 MiB per u32 column at 4 Mi ids —
 * with a dozen columns growing at the same id, ~30 ms in one store — and 256 MiB at 64 Mi.
 * Address space is cheap on 64-bit: a reservation is PROT_NONE until committed (RSS does not
 * change), and ~32 K reservations of 4 GiB fit in a 47-bit address space; V8 collects garbage
 * and retries when a new one would not fit, so dead stores' reservations are reused.
 *
 * Arrays not made by growable() (fixed tables) still grow by copying, by `factor`.
 */

export type UintArray = Uint8Array | Uint16Array | Uint32Array | Int32Array;
type Ctor<T extends UintArray> = { new (buffer: ArrayBufferLike): T; new (n: number): T; readonly BYTES_PER_ELEMENT: number };

const FIRST_RESERVATION = 64 << 10;
const MAX_RESERVATION = 2 ** 32 - 1;
/** Entries added per growth step at most (bounds the step's fill and its idle capacity). */
const MAX_STEP = 64 << 10;

interface ResizableBuffer extends ArrayBuffer {
  readonly resizable: boolean;
  readonly maxByteLength: number;
  resize(n: number): void;
}

function resizable(bytes: number, max: number): ResizableBuffer {
  return new (ArrayBuffer as unknown as { new (n: number, o: { maxByteLength: number }): ResizableBuffer })(bytes, { maxByteLength: max });
}

/** An empty column that grows in place. */
export function growable<T extends UintArray>(ctor: Ctor<T>): T {
  return new ctor(resizable(0, FIRST_RESERVATION));
}

/**
 * Returns an array holding at least `need` elements with the contents of `a`: `a` itself grown in
 * place when it is a growable column with room left in its reservation, else a larger copy. New
 * elements are `fill` (0 by default).
 */
export function grow<T extends UintArray>(a: T, need: number, fill = 0, factor = 1.5): T {
  if (need <= a.length) return a;
  const old = a.length;
  const bpe = a.BYTES_PER_ELEMENT;
  const buf = a.buffer as ResizableBuffer;
  if (buf.resizable) {
    const limit = Math.floor(MAX_RESERVATION / bpe);
    if (need > limit) throw new RangeError(`column of ${need} elements exceeds the 4 GiB limit of one buffer`);
    const want = Math.min(limit, Math.max(need, old + Math.max(4096, Math.min(MAX_STEP, Math.ceil(old / 32)))));
    const bytes = want * bpe;
    if (bytes <= buf.maxByteLength) {
      buf.resize(bytes);
      if (fill !== 0) a.fill(fill, old);
      return a;
    }
    // Outgrown the first reservation: move, once, to the largest (see the header).
    const max = MAX_RESERVATION;
    const b = new (a.constructor as Ctor<T>)(resizable(bytes, max));
    b.set(a);
    if (fill !== 0) b.fill(fill, old);
    return b;
  }
  const cap = Math.max(need, Math.ceil(old * factor), 64);
  const b = new (a.constructor as Ctor<T>)(cap);
  b.set(a);
  if (fill !== 0) b.fill(fill, old);
  return b;
}
