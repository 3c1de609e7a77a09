/**
 * The ephemeral table: tmem's cleancache half. Entries map a sparse key (pool, key u64, index u32)
 * to a value shaped like a slot-map cell (SAME | w for a same-filled word, id + 1 for an object in
 * the store's ObjectTable), so an ephemeral page holds a reference exactly as a persistent slot
 * does and shares dedup and compression with everything in its dedup domain. The page store
 * (page-store.ts) takes and drops those references; this file only keeps the entries.
 *
 *   entry columns (typed arrays indexed by entry number; no JS object or Map entry per page)
 *     hash.lo/hi  u32 x 2   8   a 64-bit hash of the key (the index's fingerprint)
 *     pool        u32       4   pool id (the store's area id of the pool: it has no slot map)
 *     khi, klo    u32 x 2   8   the key's high and low 32 bits
 *     idx         u32       4   the page index inside the key
 *     val         u32       4   SAME | w, or id + 1; 0 = a free entry
 *     prev, next  u32 x 2   8   eviction order (LRU: head = most recent); a free entry's next
 *                               chains the free list
 *   index: FingerprintIndex over hash.lo/hi (open addressing, ~5.6 B per entry, resized
 *          incrementally with two tables as Redis dict.c: no rehash-all on the request path)
 *
 * ~42 B per entry. A lookup probes the index with the key's hash and confirms each candidate by
 * comparing the four key columns, so a hash collision can never return another key's page.
 *
 * Eviction order: put inserts at the head, a get that hits moves the entry to the head, and the
 * pressure policy drops from the tail (coldest first).
 *
 * Known limits: flushObject and flushPool walk every entry (a tight loop over typed arrays,
 * O(entries ever in use)); there is no per-key index.
 */
import { grow, growable } from '../engine/alloc/typed.js';
import { FingerprintIndex, KeyColumns } from '../engine/dedup/index.js';

const NIL = 0xffffffff;

/** murmur3's 32-bit finalizer: every input bit affects every output bit. */
function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

export class EphemeralTable {
  private readonly hash = new KeyColumns();
  private pool = growable(Uint32Array);
  private khi = growable(Uint32Array);
  private klo = growable(Uint32Array);
  private idx = growable(Uint32Array);
  private val = growable(Uint32Array);
  private prev = growable(Uint32Array);
  private next = growable(Uint32Array);
  private readonly index: FingerprintIndex;
  private high = 0;
  private freeHead = NIL;
  private head = NIL;
  private tail = NIL;
  /** Live entries. */
  count = 0;
  // the hash of the last key looked up (find() computes it; add() reuses it)
  private hlo = 0;
  private hhi = 0;

  constructor() {
    this.index = new FingerprintIndex(this.hash, 64);
  }

  /** Computes the key's 64-bit hash into hlo/hhi. */
  private hashKey(pool: number, khi: number, klo: number, idx: number): void {
    const a = fmix(pool ^ 0x9e3779b9);
    const b = fmix(khi ^ Math.imul(a, 0x85ebca6b));
    const c = fmix(klo ^ Math.imul(b, 0xc2b2ae35));
    this.hlo = fmix(idx ^ Math.imul(c, 0x27d4eb2f));
    this.hhi = fmix((this.hlo + Math.imul(idx, 0x165667b1) + c) >>> 0);
  }

  /** The entry holding this key, or -1. */
  find(pool: number, khi: number, klo: number, idx: number): number {
    this.hashKey(pool, khi, klo, idx);
    const ix = this.index;
    ix.probeStart(this.hlo, this.hhi);
    for (let e = ix.probeNext(); e >= 0; e = ix.probeNext()) {
      if (this.idx[e] === idx && this.klo[e] === klo && this.khi[e] === khi && this.pool[e] === pool) return e;
    }
    return -1;
  }

  /** Adds an entry for a key find() has just reported absent, at the head of the order. */
  add(pool: number, khi: number, klo: number, idx: number, v: number): number {
    let e: number;
    if (this.freeHead !== NIL) {
      e = this.freeHead;
      this.freeHead = this.next[e]!;
    } else {
      e = this.high++;
      if (e >= this.val.length) {
        this.val = grow(this.val, e + 1);
        const cap = this.val.length;
        this.pool = grow(this.pool, cap);
        this.khi = grow(this.khi, cap);
        this.klo = grow(this.klo, cap);
        this.idx = grow(this.idx, cap);
        this.prev = grow(this.prev, cap);
        this.next = grow(this.next, cap);
        this.hash.ensure(cap);
      }
    }
    this.pool[e] = pool; this.khi[e] = khi; this.klo[e] = klo; this.idx[e] = idx;
    this.val[e] = v;
    this.hash.lo[e] = this.hlo;
    this.hash.hi[e] = this.hhi;
    this.index.insert(e);
    this.pushHead(e);
    this.count++;
    return e;
  }

  value(e: number): number {
    return this.val[e]!;
  }

  /** Replaces an entry's value (the caller dropped the old reference) and makes it the most recent. */
  setValue(e: number, v: number): void {
    this.val[e] = v;
    this.touch(e);
  }

  /** Makes `e` the most recently used entry. */
  touch(e: number): void {
    if (this.head === e) return;
    this.unlink(e);
    this.pushHead(e);
  }

  /** Removes entry `e`; returns its value (the caller drops the reference). */
  remove(e: number): number {
    const v = this.val[e]!;
    this.index.remove(e);
    this.unlink(e);
    this.val[e] = 0;
    this.next[e] = this.freeHead;
    this.freeHead = e;
    this.count--;
    return v;
  }

  /** The least recently used entry, or -1. */
  coldest(): number {
    return this.tail === NIL ? -1 : this.tail;
  }

  poolOf(e: number): number {
    return this.pool[e]!;
  }

  /**
   * Entries matching (pool) or (pool, khi, klo), for flushPool / flushObject: fills `out` with up
   * to out.length of them and returns how many (call again until it returns less than asked).
   */
  collect(pool: number, khi: number, klo: number, wholePool: boolean, out: Uint32Array): number {
    let n = 0;
    const val = this.val, p = this.pool, hi = this.khi, lo = this.klo;
    for (let e = 0; e < this.high && n < out.length; e++) {
      if (val[e] === 0 || p[e] !== pool) continue;
      if (!wholePool && (hi[e] !== khi || lo[e] !== klo)) continue;
      out[n++] = e;
    }
    return n;
  }

  /** Calls fn(value) for every live entry (white-box checks). */
  forEachValue(fn: (v: number) => void): void {
    for (let e = 0; e < this.high; e++) if (this.val[e] !== 0) fn(this.val[e]!);
  }

  bytes(): number {
    return this.hash.bytes() + this.index.bytes() + this.pool.byteLength + this.khi.byteLength + this.klo.byteLength +
      this.idx.byteLength + this.val.byteLength + this.prev.byteLength + this.next.byteLength;
  }

  private pushHead(e: number): void {
    this.prev[e] = NIL;
    this.next[e] = this.head;
    if (this.head !== NIL) this.prev[this.head] = e; else this.tail = e;
    this.head = e;
  }

  private unlink(e: number): void {
    const p = this.prev[e]!, n = this.next[e]!;
    if (p !== NIL) this.next[p] = n; else this.head = n;
    if (n !== NIL) this.prev[n] = p; else this.tail = p;
  }

  /** White-box check: the order holds exactly the live entries, each findable by its key. */
  checkInvariants(): void {
    let n = 0;
    let p = NIL;
    for (let e = this.head; e !== NIL; e = this.next[e]!) {
      if (this.prev[e] !== p) throw new Error(`ephemeral order: ${e}.prev ${this.prev[e]} != ${p}`);
      if (this.val[e] === 0) throw new Error(`ephemeral order holds free entry ${e}`);
      if (++n > this.count) throw new Error('ephemeral order longer than its count (a cycle?)');
      p = e;
    }
    if (p !== this.tail) throw new Error(`ephemeral tail ${this.tail} != ${p}`);
    if (n !== this.count) throw new Error(`ephemeral count ${this.count} != ${n}`);
    if (this.index.size !== this.count) throw new Error(`ephemeral index size ${this.index.size} != ${this.count}`);
    for (let e = 0; e < this.high; e++) {
      if (this.val[e] === 0) continue;
      if (this.find(this.pool[e]!, this.khi[e]!, this.klo[e]!, this.idx[e]!) !== e) throw new Error(`ephemeral entry ${e} not found by its key`);
    }
  }
}
