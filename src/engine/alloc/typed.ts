/**
 * Growable typed arrays for per-object and per-zspage columns.
 *
 * Columns live on resizable ArrayBuffers (length-tracking views): growing one commits more of an
 * address-space reservation in place — no copy, no stop-the-world pause while a multi-megabyte
 * column is duplicated, and little idle capacity: each step adds max(4096 entries, 1/32 of the
 * column), so at most ~3% of a large column is unused (a 1.5x copy-and-double scheme leaves up to
 * a third idle, and metadata_bytes counts it). When a reservation is used up the column moves,
 * once, to one 16x larger (1 MiB, 16 MiB, 256 MiB, 4 GiB - 1: the V8 limit), so small stores
 * reserve little address space and large ones copy only a few times in their life.
 *
 * Arrays not made by growable() (fixed tables) still grow by copying, by `factor`.
 */

export type UintArray = Uint8Array | Uint16Array | Uint32Array | Int32Array;
type Ctor<T extends UintArray> = { new (buffer: ArrayBufferLike): T; new (n: number): T; readonly BYTES_PER_ELEMENT: number };

const FIRST_RESERVATION = 1 << 20;
const MAX_RESERVATION = 2 ** 32 - 1;

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
    const want = Math.max(need, old + Math.max(4096, Math.ceil(old / 32)));
    const bytes = want * bpe;
    if (bytes <= buf.maxByteLength) {
      buf.resize(bytes);
      if (fill !== 0) a.fill(fill, old);
      return a;
    }
    if (bytes > MAX_RESERVATION) throw new RangeError(`column of ${want} elements exceeds the 4 GiB limit of one buffer`);
    const max = Math.min(MAX_RESERVATION, Math.max(bytes, buf.maxByteLength * 16));
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
