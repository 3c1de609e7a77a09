/**
 * Size classes for the zsmalloc-style pool.
 *
 * Objects are rounded up to a class size; a class packs its objects densely into "zspages" of
 * `chain` contiguous units (one unit = one store page, P bytes), and an object may span the unit
 * boundaries inside its zspage. Zspages are carved out of arenas of `arenaUnits` units.
 *
 * The class step is P/256 (16 bytes for 4 KiB pages, as in zsmalloc). For each class the chain
 * length k in 1..MAX_CHAIN is chosen to waste the fewest bytes per stored object, counting both
 * the tail of the zspage that no whole object fits in and the tail of the arena that no whole
 * zspage fits in.
 *
 * Worked example, P = 4096, arena = 256 units (1 MiB):
 *   class 1232 B: k=1 -> 3 objs, 400 B tail/zspage  (400/3 = 133 B waste per object)
 *                 k=3 -> 9 objs (12288/1232 = 9.97), 1200 B tail, 85 zspages per arena + 1 unit
 *                        spare -> (1200 + 4096/85)/9 = 138 B per object
 *                 k=5 -> 16 objs (20480/1232 = 16.6), 768 B tail, 51 zspages + 1 spare unit
 *                        -> (768 + 4096/51)/16 = 53 B per object  <- chosen
 * Classes with the same (chain, objects per zspage) are merged into the largest of them, as
 * zsmalloc does: a smaller class could not pack more objects anyway.
 */

export const MAX_CHAIN = 8;
/** Smallest class, in class steps (32 bytes at 4 KiB pages). Also >= 2 bytes: a free object holds a u16 link. */
export const MIN_CLASS_STEPS = 2;
/** Upper bound of objects per zspage: MAX_CHAIN * 256 / MIN_CLASS_STEPS. */
export const MAX_OBJS_PER_ZSPAGE = (MAX_CHAIN * 256) / MIN_CLASS_STEPS;

export interface ClassTable {
  readonly pageSize: number;
  readonly step: number;
  readonly arenaUnits: number;
  /** Number of distinct (merged) classes. */
  readonly count: number;
  /** Per merged class: object size, chain length, objects per zspage. */
  readonly size: Uint32Array;
  readonly chain: Uint8Array;
  readonly objsPerZspage: Uint16Array;
  /** Maps ceil(len/step) -> merged class index, for len in 1..pageSize. */
  readonly byStep: Uint16Array;
}

export function arenaUnitsFor(pageSize: number): number {
  return Math.max(MAX_CHAIN * 2, (1 << 20) / pageSize);
}

/** `arenaUnits`: units of pageSize per arena (default 1 MiB worth; tests use the minimum, 16). */
export function buildClassTable(pageSize: number, arenaUnits = arenaUnitsFor(pageSize)): ClassTable {
  const step = pageSize / 256;
  if (!Number.isInteger(arenaUnits) || arenaUnits < MAX_CHAIN * 2 || arenaUnits > 256) throw new RangeError(`arena units must be ${MAX_CHAIN * 2}..256`);
  const steps = 256;
  const rawSize: number[] = [];
  const rawChain: number[] = [];
  const rawObjs: number[] = [];
  for (let s = MIN_CLASS_STEPS; s <= steps; s++) {
    const size = s * step;
    let best = -1, bestWaste = Infinity, bestObjs = 0;
    for (let k = 1; k <= MAX_CHAIN; k++) {
      const bytes = k * pageSize;
      const objs = Math.floor(bytes / size);
      if (objs === 0) continue;
      const perArena = Math.floor(arenaUnits / k);
      const tail = bytes - objs * size + ((arenaUnits - perArena * k) * pageSize) / perArena;
      const waste = tail / objs;
      // On a tie (e.g. no waste at all) prefer the longer chain: fewer zspages, less metadata.
      if (waste <= bestWaste + 1e-9) { best = k; bestWaste = waste; bestObjs = objs; }
    }
    rawSize.push(size); rawChain.push(best); rawObjs.push(bestObjs);
  }
  // Merge: walk from the largest class down; a class joins the next larger one when both have
  // the same chain and objects per zspage.
  const mergedOf = new Array<number>(rawSize.length);
  const size: number[] = [], chain: number[] = [], objs: number[] = [];
  for (let i = rawSize.length - 1; i >= 0; i--) {
    const last = size.length - 1;
    if (last >= 0 && chain[last] === rawChain[i] && objs[last] === rawObjs[i]) {
      mergedOf[i] = last;
    } else {
      size.push(rawSize[i]!); chain.push(rawChain[i]!); objs.push(rawObjs[i]!);
      mergedOf[i] = size.length - 1;
    }
  }
  // Reverse so class index grows with size.
  const n = size.length;
  if (n > 256) throw new Error(`${n} size classes: zspages record their class in a u8`);
  const t: ClassTable = {
    pageSize, step, arenaUnits, count: n,
    size: Uint32Array.from(size.reverse()),
    chain: Uint8Array.from(chain.reverse()),
    objsPerZspage: Uint16Array.from(objs.reverse()),
    byStep: new Uint16Array(steps + 1),
  };
  for (let s = 0; s <= steps; s++) {
    const i = Math.max(s, MIN_CLASS_STEPS) - MIN_CLASS_STEPS;
    t.byStep[s] = n - 1 - mergedOf[i]!;
  }
  return t;
}

/** Class index for an object of `len` bytes (1..pageSize). */
export function classFor(t: ClassTable, len: number): number {
  return t.byStep[Math.ceil(len / t.step)]!;
}
