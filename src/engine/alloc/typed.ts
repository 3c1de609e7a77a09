/** Growable typed arrays: capacity grows by 1.5x (bounded waste), contents preserved. */

export type UintArray = Uint8Array | Uint16Array | Uint32Array | Int32Array;

/** Returns `a` if it already holds `need` elements, else a larger copy (new tail filled with `fill`). */
export function grow<T extends UintArray>(a: T, need: number, fill = 0): T {
  if (need <= a.length) return a;
  const cap = Math.max(need, Math.ceil(a.length * 1.5), 64);
  const b = new (a.constructor as { new (n: number): T })(cap);
  b.set(a);
  if (fill !== 0) b.fill(fill, a.length);
  return b;
}
