/**
 * Growable typed arrays, contents preserved. Capacity grows by `factor` (1.5 by default).
 * Per-object columns use OBJECT_GROWTH = 1.25: at most 25% idle capacity in the biggest
 * metadata, for an amortized 5 copies per element.
 */

export const OBJECT_GROWTH = 1.25;

export type UintArray = Uint8Array | Uint16Array | Uint32Array | Int32Array;

/** Returns `a` if it already holds `need` elements, else a larger copy (new tail filled with `fill`). */
export function grow<T extends UintArray>(a: T, need: number, fill = 0, factor = 1.5): T {
  if (need <= a.length) return a;
  const cap = Math.max(need, Math.ceil(a.length * factor), 64);
  const b = new (a.constructor as { new (n: number): T })(cap);
  b.set(a);
  if (fill !== 0) b.fill(fill, a.length);
  return b;
}
