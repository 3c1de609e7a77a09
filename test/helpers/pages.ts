/** Deterministic page content generators shared by tests (seeded, no Math.random). */

export type Kind = 'zero' | 'same' | 'dup' | 'text' | 'random';
export const KINDS: Kind[] = ['zero', 'same', 'dup', 'text', 'random'];

/** xorshift32 PRNG filling `buf` from `seed`. */
export function fillRandom(buf: Uint8Array, seed: number): void {
  let x = (seed | 0) || 0x9e3779b9;
  for (let i = 0; i < buf.length; i += 4) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    buf[i] = x; buf[i + 1] = x >>> 8; buf[i + 2] = x >>> 16; buf[i + 3] = x >>> 24;
  }
}

/** A page of the given kind; `v` picks the variant (dup pages come from a small set of 4). */
export function makePage(kind: Kind, v: number, size = 4096): Buffer {
  const p = Buffer.alloc(size);
  switch (kind) {
    case 'zero': break;
    case 'same': {
      const w = Buffer.alloc(8); w.writeUInt32LE((v * 2654435761) >>> 0, 0); w.writeUInt32LE(v & 3, 4);
      for (let i = 0; i < size; i += 8) w.copy(p, i);
      break;
    }
    case 'dup': p.write(`duplicate page #${v & 3} `.repeat(size / 16)); break;
    case 'text': p.write(JSON.stringify({ id: v, name: `user${v % 97}`, tags: ['a', 'b'], n: v * 7 }).repeat(size / 40)); break;
    case 'random': fillRandom(p, v + 1); break;
  }
  return p;
}
