/**
 * RemoteTier: cold objects on a Redis Cluster, content-addressed and shared by every host of a
 * dedup domain (see value.ts for keys and values, docs/REMOTE.md for the design argument).
 *
 *   append() ──copy──> write buffer (RAM, bounded: `inflightBytes`)      Redis Cluster
 *                      │ next tick: seal, compute keys (HMAC of the        ┌──────────────┐
 *                      │ uncompressed page), group keys by master          │ master A ─ replica A'
 *                      ├── per node, pipeline 1: PEXPIRE k lease …  ───>   │ master B ─ replica B'
 *                      │   (1 = another host stored it: dedup hit)         │ master C ─ replica C'
 *                      ├── per node, pipeline 2: SET k v PX lease NX …,    └──────────────┘
 *                      │   WAIT 1 <ms>  (master + >= 1 replica have it)
 *                      └── acknowledged: the object leaves the buffer; loads GET it.
 *
 * Locations: w0 = a slot of this tier's own table (typed-array columns: 128-bit key as four
 * u32, length, codec, state, generation, buffer offset, pins), w1 = the slot's generation when
 * it was handed out (a stale location never reads another object).
 *
 *   slot states: FREE -> PENDING (in a buffer) -> STORED (acknowledged) -> FREE on release
 *                PENDING -> DROPPED (released before acknowledged; freed when its batch ends)
 *
 * Invariants:
 * - An object leaves its write buffer only after its node answered WAIT with >= waitReplicas:
 *   the only copy is never in a place a single node failure can lose.
 * - No counters in Redis: each object key carries a lease (its TTL) that every host holding it
 *   renews every lease/3; nothing is ever deleted, a key nobody renews expires (mark = renew,
 *   sweep = Redis's own expiry). A failover that rolls back a renewal costs one renewal period of
 *   the remaining lease, never a key still in use. The lease is a property of the domain (the
 *   first host stores it in `zd:<domain>:lease`; the others adopt it), so hosts never shorten
 *   each other's leases.
 * - readSync() refuses (ERR_DISK_READ): a network read cannot complete while the event loop is
 *   held. The NBD server only uses the async calls; the library's synchronous load of a remote
 *   object is an EIO.
 * - Bytes in flight are bounded by the write buffers; loads are bounded by the core's read slots.
 *
 * Known limits: the table of this host's objects lives only in RAM (a restart starts empty, its
 * old keys expire after one lease); a shard that lost its only replica (after a failover, until
 * the old master rejoins) cannot acknowledge writes, so objects for it wait in the buffers and
 * new appends are refused ('failed': the placement tier then uses the disk).
 */
import { Cluster, type ClusterNode } from 'ioredis';
import calculateSlot from 'cluster-key-slot';
import { ZdedupError } from '../../errors.js';
import { parseCodec, type Codec } from '../../engine/codec/codec.js';
import type { AppendResult, CleanResult, CleaningOwner, RemoteStats, Tier, TierStats } from '../tier.js';
import { NO_TIER_STATS } from '../tier.js';
import { DOMAIN_RE, VALUE_HEADER, checkValue, contentKey, domainKey, encodeValue, redisKey } from './value.js';

export interface RemoteTierOptions {
  /** `redis://HOST:PORT[,HOST:PORT…]` or `rediss://…` (TLS): seed nodes of the cluster. */
  url: string;
  /** AUTH password (from a file: never on a command line). */
  password?: string;
  /** Dedup domain: hosts with the same domain and secret share objects. [A-Za-z0-9._-]{1,64}. */
  domain: string;
  /** Domain secret (>= 16 bytes): keys are HMACs under it. */
  secret: Uint8Array;
  pageSize: number;
  /** The store's codec spec (re-encodes an object another host stored with another codec). Default 'lz4'. */
  codec?: string;
  /** Object lease in ms, renewed every third (default 10 min); the domain's stored lease wins. */
  leaseMs?: number;
  /** Bytes of write buffers (objects not yet acknowledged by master + replica). Default 16 MiB. */
  inflightBytes?: number;
  /** Replicas that must acknowledge a write (WAIT). Default 1. */
  waitReplicas?: number;
  /** WAIT's timeout and the bound of one load (with its retries), ms. Default 2000. */
  timeoutMs?: number;
  events?: (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;
}

/** Counters and latency of the remote tier (part of TierStats; /stats shows them). */
const FREE = 0, PENDING = 1, STORED = 2, DROPPED = 3;
const BUF_BYTES = 1 << 20;
/** A batch (one buffer) holds at most this many objects. */
const BUF_OBJECTS = 4096;
/** Keys per renewal pipeline round. */
const RENEW_CHUNK = 4096;
/** Consecutive failed flush attempts before the tier reports itself down ('failed' appends). */
const DOWN_AFTER = 2;
const LATENCY_RING = 4096;

const sleep = (ms: number): Promise<void> => new Promise((r) => { setTimeout(r, ms).unref(); });

/** Parses `redis://h:p,h:p` / `rediss://…`; throws ERR_INVALID_ARGUMENT with the reason. */
export function parseRemoteUrl(url: string): { tls: boolean; nodes: ClusterNode[] } {
  const m = /^(rediss?):\/\/(.+)$/.exec(url.trim());
  if (!m) throw new ZdedupError('ERR_INVALID_ARGUMENT', `--remote must look like redis://HOST:PORT[,HOST:PORT…] (or rediss://), got "${url}"`);
  const nodes = m[2]!.replace(/\/$/, '').split(',').map((hp) => {
    const x = /^\[?([^\]]+?)\]?:(\d{1,5})$/.exec(hp.trim());
    if (!x || Number(x[2]) < 1 || Number(x[2]) > 65535) throw new ZdedupError('ERR_INVALID_ARGUMENT', `bad cluster seed "${hp}" in --remote (expected HOST:PORT)`);
    return { host: x[1]!, port: Number(x[2]) };
  });
  return { tls: m[1] === 'rediss', nodes };
}

export class RemoteTier implements Tier {
  readonly name = 'remote';
  lastW0 = 0;
  lastW1 = 0;
  locBuf: Uint8Array;
  locOff = 0;

  readonly cluster: Cluster;
  private readonly P: number;
  private readonly prefix: string;
  private readonly kDomain: Buffer;
  private leaseMs: number;
  private readonly waitReplicas: number;
  private readonly timeoutMs: number;
  private readonly codec: Codec;
  private readonly decoders: (Codec | null)[] = [null, null, null];
  private readonly events: NonNullable<RemoteTierOptions['events']>;

  // ---- slot table (typed-array columns, grown by doubling) ----
  private cap = 0;
  private keyW = new Uint32Array(0);   // 4 words per slot
  private lens = new Uint32Array(0);
  private codecs = new Uint8Array(0);
  private state = new Uint8Array(0);
  private gen = new Uint32Array(0);
  private bufAt = new Int32Array(0);   // arena offset while in a buffer, else -1
  private pins = new Uint16Array(0);
  private uploaded = new Uint8Array(0); // this host's SET of the object succeeded (a retry's PEXPIRE hit is then not a dedup hit)
  private freeSlots = new Uint32Array(0);
  private nFree = 0;
  private high = 0;

  // ---- write buffers ----
  private readonly arena: Buffer;
  private readonly nBufs: number;
  private readonly bufUsed: Int32Array;
  private readonly bufCount: Int32Array;
  private readonly bufSlots: Uint32Array[];
  private readonly bufBusy: Uint8Array;  // 0 free, 1 open, 2 flushing
  private readonly bufTries: Uint16Array;
  private open = -1;
  private flushScheduled = false;
  private readonly sealed: number[] = [];         // buffers waiting for the flusher
  private flushing: Promise<void> | null = null;  // the flusher's current run
  private waiters: (() => void)[] = [];

  private down = false;
  private failStreak = 0;
  private closed = false;
  private renewTimer: NodeJS.Timeout | null = null;
  private probeTimer: NodeJS.Timeout | null = null;
  private renewing = false;
  private readonly lat = new Float64Array(LATENCY_RING);
  private latN = 0;

  private c = {
    remote_objects: 0, remote_bytes: 0, remote_stores: 0, remote_loads: 0, remote_dedup_hits: 0,
    remote_errors: 0, remote_retries: 0, remote_lost_objects: 0, remote_bytes_sent: 0, remote_bytes_received: 0,
  };

  constructor(opts: RemoteTierOptions) {
    if (!DOMAIN_RE.test(opts.domain)) throw new ZdedupError('ERR_INVALID_ARGUMENT', `--remote-domain must match [A-Za-z0-9._-]{1,64}, got "${opts.domain}"`);
    if (!(opts.secret instanceof Uint8Array) || opts.secret.length < 16) throw new ZdedupError('ERR_INVALID_ARGUMENT', 'the remote domain secret must hold at least 16 bytes');
    const { tls, nodes } = parseRemoteUrl(opts.url);
    this.P = opts.pageSize;
    this.prefix = `zd:${opts.domain}:`;
    this.kDomain = domainKey(opts.secret, opts.domain);
    this.leaseMs = opts.leaseMs ?? 600_000;
    if (!Number.isSafeInteger(this.leaseMs) || this.leaseMs < 1000) throw new ZdedupError('ERR_INVALID_ARGUMENT', 'the remote lease must be at least 1 s');
    this.waitReplicas = opts.waitReplicas ?? 1;
    this.timeoutMs = opts.timeoutMs ?? 2000;
    this.codec = parseCodec(opts.codec ?? 'lz4');
    this.events = opts.events ?? (() => {});
    const inflight = Math.max(2 * BUF_BYTES, opts.inflightBytes ?? 16 << 20);
    this.nBufs = Math.floor(inflight / BUF_BYTES);
    this.arena = Buffer.alloc(this.nBufs * BUF_BYTES);
    this.locBuf = this.arena;
    this.bufUsed = new Int32Array(this.nBufs);
    this.bufCount = new Int32Array(this.nBufs);
    this.bufBusy = new Uint8Array(this.nBufs);
    this.bufTries = new Uint16Array(this.nBufs);
    this.bufSlots = Array.from({ length: this.nBufs }, () => new Uint32Array(BUF_OBJECTS));
    this.growSlots(1024);
    // Failover-relevant client settings (docs/REMOTE.md): a redirect or CLUSTERDOWN is retried by
    // the client for up to maxRedirections x retryDelayOnFailover; beyond that our own batches
    // retry (bounded per load by timeoutMs, forever for buffered writes, which stay in RAM).
    this.cluster = new Cluster(nodes, {
      enableAutoPipelining: true,     // loads issued in one tick go out as one pipeline per node
      slotsRefreshInterval: 2000,     // notice a failover even without a redirect
      slotsRefreshTimeout: 1000,
      retryDelayOnFailover: 200,
      retryDelayOnClusterDown: 200,
      retryDelayOnTryAgain: 100,
      retryDelayOnMoved: 0,
      maxRedirections: 16,
      enableOfflineQueue: true,
      clusterRetryStrategy: (times: number) => Math.min(100 * times, 1000), // never give up: the tier resumes by itself
      dnsLookup: (address, cb) => cb(null, address),
      redisOptions: {
        password: opts.password,
        tls: tls ? {} : undefined,
        connectTimeout: Math.max(500, this.timeoutMs),
        commandTimeout: this.timeoutMs + 1000, // WAIT's own timeout plus the round trip
        maxRetriesPerRequest: 1,
      },
    });
    this.cluster.on('error', () => {}); // counted where a command fails
    // ioredis parks each auto-pipelined command issued before the first slot map on a 'ready'
    // listener of its own (removed on ready): a burst of loads at start is not a leak.
    this.cluster.setMaxListeners(256);
    void this.adoptDomainLease();
    this.renewTimer = setInterval(() => { void this.renewAll(); }, Math.max(250, Math.floor(this.leaseMs / 3)));
    this.renewTimer.unref();
  }

  /** The first host of a domain fixes its lease; the others use it (a shorter one would cut theirs). */
  private async adoptDomainLease(): Promise<void> {
    try {
      const k = `${this.prefix}lease`;
      await this.cluster.set(k, String(this.leaseMs), 'NX');
      const v = Number(await this.cluster.get(k));
      if (Number.isSafeInteger(v) && v >= 1000 && v !== this.leaseMs) {
        this.events('info', 'remote tier uses the lease of its dedup domain', { configured_ms: this.leaseMs, domain_ms: v });
        this.leaseMs = v;
        if (this.renewTimer) clearInterval(this.renewTimer);
        this.renewTimer = setInterval(() => { void this.renewAll(); }, Math.floor(v / 3));
        this.renewTimer.unref();
      }
    } catch { /* cluster unreachable at start: keep ours; renewals and flushes retry */ }
  }

  get lease(): number { return this.leaseMs; }

  // ---------------------------------------------------------------------------------------------
  // Slot table

  private growSlots(n: number): void {
    const cap = Math.max(n, this.cap * 2);
    const g = <T extends Uint32Array | Uint8Array | Int32Array | Uint16Array>(a: T, per = 1): T => {
      const b = new (a.constructor as new (n: number) => T)(cap * per);
      b.set(a);
      return b;
    };
    this.keyW = g(this.keyW, 4); this.lens = g(this.lens); this.codecs = g(this.codecs); this.state = g(this.state);
    this.gen = g(this.gen); this.bufAt = g(this.bufAt); this.pins = g(this.pins); this.uploaded = g(this.uploaded); this.freeSlots = g(this.freeSlots);
    this.cap = cap;
  }

  private allocSlot(): number {
    if (this.nFree > 0) return this.freeSlots[--this.nFree]!;
    if (this.high === this.cap) this.growSlots(this.high + 1);
    return this.high++;
  }

  private freeSlot(s: number): void {
    this.c.remote_objects--;
    this.c.remote_bytes -= this.lens[s]!;
    this.state[s] = FREE;
    this.bufAt[s] = -1;
    if (this.pins[s] === 0) this.freeSlots[this.nFree++] = s; // else on the last unpin
  }

  // ---------------------------------------------------------------------------------------------
  // Tier: append, buffers, flush

  append(_id: number, _fpLo: number, _fpHi: number, codec: number, src: Uint8Array, off: number, len: number): AppendResult {
    if (this.closed) throw new ZdedupError('ERR_CLOSED', 'remote tier is closed');
    if (this.down) return 'failed';
    let b = this.open;
    if (b < 0 || this.bufUsed[b]! + len > BUF_BYTES || this.bufCount[b] === BUF_OBJECTS) {
      if (b >= 0) this.seal(b);
      b = this.bufBusy.indexOf(0);
      if (b < 0) {
        // Every buffer is being written: wait, unless one keeps failing (a shard cannot
        // acknowledge): then say so, and the caller places the object elsewhere or refuses it.
        for (let i = 0; i < this.nBufs; i++) if (this.bufTries[i]! > 0) return 'failed';
        return 'busy';
      }
      this.bufBusy[b] = 1; this.bufUsed[b] = 0; this.bufCount[b] = 0; this.bufTries[b] = 0;
      this.open = b;
    }
    const s = this.allocSlot();
    const at = b * BUF_BYTES + this.bufUsed[b]!;
    this.arena.set(src.subarray(off, off + len), at);
    this.bufUsed[b]! += len;
    this.bufSlots[b]![this.bufCount[b]!++] = s;
    this.state[s] = PENDING;
    this.lens[s] = len;
    this.codecs[s] = codec;
    this.bufAt[s] = at;
    this.uploaded[s] = 0;
    this.gen[s] = (this.gen[s]! + 1) >>> 0;
    this.lastW0 = s;
    this.lastW1 = this.gen[s]!;
    this.c.remote_objects++;
    this.c.remote_bytes += len;
    if (!this.flushScheduled && this.flushing === null) {
      this.flushScheduled = true; // the end of this tick seals the batch (while a round runs, it keeps filling)
      setImmediate(() => { this.flushScheduled = false; if (this.open >= 0 && this.flushing === null) this.seal(this.open); });
    }
    return 'ok';
  }

  private seal(b: number): void {
    if (this.open === b) this.open = -1;
    this.bufBusy[b] = 2;
    this.sealed.push(b);
    this.kickFlusher();
  }

  private kickFlusher(): void {
    if (this.flushing !== null || this.closed) return;
    this.flushing = this.flushLoop().finally(() => {
      this.flushing = null;
      if (this.sealed.length > 0) this.kickFlusher();
    });
  }

  /**
   * One flusher: each round takes every sealed buffer, so one WAIT per node acknowledges all of
   * them (a WAIT blocks its connection until the replica answers: many small rounds would queue
   * behind each other's WAITs). What arrives during a round goes in the next one (group commit).
   */
  private async flushLoop(): Promise<void> {
    while (this.sealed.length > 0 && !this.closed) {
      await this.flush(this.sealed.splice(0));
      if (this.open >= 0 && this.bufCount[this.open]! > 0) {
        const b = this.open;
        this.open = -1;
        this.bufBusy[b] = 2;
        this.sealed.push(b);
      }
    }
  }

  /** Writes the objects of buffers `bufs` until every one is acknowledged (or released), then frees the buffers. */
  private async flush(bufs: number[]): Promise<void> {
    // Keys first (the HMAC needs the uncompressed page): once per object.
    const page = Buffer.allocUnsafe(this.P);
    let todo: number[] = [];
    for (const b of bufs) {
      const slots = this.bufSlots[b]!;
      for (let i = 0, n = this.bufCount[b]!; i < n; i++) {
        const s = slots[i]!;
        const at = this.bufAt[s]!;
        const len = this.lens[s]!, codec = this.codecs[s]!;
        const stored = this.arena.subarray(at, at + len);
        // An object that does not decompress is corrupt already (the core's load would refuse it):
        // it is keyed by its stored bytes, a key no real page has, so it is never shared.
        if (codec !== 0 && this.decoder(codec).decompress(stored, len, page, this.P)) contentKey(this.kDomain, page, this.P, this.keyW, s * 4);
        else contentKey(this.kDomain, stored, len, this.keyW, s * 4);
        todo.push(s);
      }
    }
    for (let attempt = 0; ; attempt++) {
      todo = todo.filter((s) => this.state[s] === PENDING || this.state[s] === DROPPED);
      if (todo.length === 0 || this.closed) break;
      const failed = await this.writeBatch(todo);
      if (failed.length === 0) { this.markUp(); break; }
      todo = failed;
      for (const b of bufs) this.bufTries[b] = attempt + 1;
      this.c.remote_retries++;
      if (++this.failStreak >= DOWN_AFTER) this.markDown('writes are not acknowledged');
      await sleep(Math.min(50 * 2 ** attempt, 1000));
    }
    for (const b of bufs) {
      const slots = this.bufSlots[b]!;
      for (let i = 0, n = this.bufCount[b]!; i < n; i++) { // anything left (closed) is dropped with the tier
        const s = slots[i]!;
        if (this.state[s] === DROPPED) this.freeSlot(s);
      }
      this.bufBusy[b] = 0;
      this.bufTries[b] = 0;
    }
    this.wake();
  }

  /** One attempt for `todo` slots, pipelined per master; returns the slots not acknowledged. */
  private async writeBatch(todo: number[]): Promise<number[]> {
    if (this.cluster.status !== 'ready') await this.whenReady();
    const groups = this.groupByNode(todo);
    const failed: number[] = [];
    await Promise.all([...groups.values()].map(async (g) => {
      try {
        const keys = g.map((s) => redisKey(this.prefix, this.keyW, s * 4));
        // 1. Is the content already there (another host, or ours before)? PEXPIRE both asks and
        //    renews the lease atomically: 1 = present (an upload skipped), 0 = absent.
        const p1 = this.cluster.pipeline();
        for (const k of keys) p1.pexpire(k, this.leaseMs);
        const r1 = await p1.exec();
        const p2 = this.cluster.pipeline();
        const sent: number[] = []; // indexes into g of the values uploaded
        for (let i = 0; i < g.length; i++) {
          const [err, res] = r1![i]!;
          if (err) throw err;
          if (res === 1) continue;
          const s = g[i]!;
          const at = this.bufAt[s]!;
          const v = encodeValue(this.codecs[s]!, this.arena, at, this.lens[s]!, this.P);
          p2.set(keys[i]!, v, 'PX', this.leaseMs, 'NX');
          this.c.remote_bytes_sent += v.length + keys[i]!.length;
          sent.push(i);
        }
        // 2. Upload what is missing, then WAIT on the same connection: every write of this
        //    pipeline and of the PEXPIREs before it reached >= waitReplicas replicas.
        p2.call('WAIT', this.waitReplicas, this.timeoutMs);
        const r2 = await p2.exec();
        for (const [err] of r2!) if (err) throw err;
        const acked = r2![r2!.length - 1]![1] as number;
        if (acked < this.waitReplicas) throw new Error(`WAIT: ${acked} of ${this.waitReplicas} replicas acknowledged`);
        for (let j = 0; j < sent.length; j++) { // replies of the SETs come first, in order
          if (r2![j]![1] === 'OK') this.uploaded[g[sent[j]!]!] = 1; // else NX lost a race: another host stored it meanwhile
        }
        for (const s of g) {
          if (this.uploaded[s] === 1) this.c.remote_stores++; else this.c.remote_dedup_hits++;
          if (this.state[s] === PENDING) { this.state[s] = STORED; this.bufAt[s] = -1; }
        }
      } catch (e) {
        this.c.remote_errors++;
        this.noteError(e);
        for (const s of g) failed.push(s);
      }
    }));
    return failed;
  }

  /** Resolves when the client has the slot map (or after timeoutMs: the attempt then fails and is retried). One wait shared by all batches. */
  private readyWait: Promise<void> | null = null;
  private whenReady(): Promise<void> {
    return this.readyWait ??= new Promise<void>((resolve) => {
      const cluster = this.cluster;
      const done = (): void => { clearTimeout(t); cluster.off('ready', done); this.readyWait = null; resolve(); };
      const t = setTimeout(done, this.timeoutMs);
      t.unref();
      cluster.once('ready', done);
    });
  }

  /** Groups slots by the master serving their key's hash slot (one pipeline per node). */
  private groupByNode(slots: number[]): Map<string, number[]> {
    const groups = new Map<string, number[]>();
    const map = this.cluster.slots;
    for (const s of slots) {
      const hs = calculateSlot(redisKey(this.prefix, this.keyW, s * 4));
      const node = map[hs]?.[0] ?? `slot:${hs}`;
      let g = groups.get(node);
      if (!g) { g = []; groups.set(node, g); }
      g.push(s);
    }
    return groups;
  }

  private decoder(codec: number): Codec {
    return this.decoders[codec] ??= parseCodec(codec === 1 ? 'lz4' : 'zstd');
  }

  private lastErrorLog = 0;
  private noteError(e: unknown): void {
    const now = Date.now();
    if (now - this.lastErrorLog > 5000) {
      this.lastErrorLog = now;
      this.events('warn', 'remote tier: cluster operation failed (retried)', { error: e instanceof Error ? e.message : String(e) });
    }
  }

  private markDown(why: string): void {
    if (this.down) return;
    this.down = true;
    this.events('warn', 'remote tier down: new objects go to the disk tier or are refused until the cluster answers', { why });
    this.probeTimer = setInterval(() => { void this.probe(); }, 250);
    this.probeTimer.unref();
  }

  private markUp(): void {
    this.failStreak = 0;
    if (!this.down) return;
    this.down = false;
    if (this.probeTimer) { clearInterval(this.probeTimer); this.probeTimer = null; }
    this.events('info', 'remote tier up again');
    this.wake();
  }

  /** While down with nothing to flush: is every master answering again? */
  private probing = false;
  private async probe(): Promise<void> {
    if (this.probing || this.closed) return;
    if (this.flushing !== null) return; // the flusher retries and decides
    this.probing = true;
    try {
      const masters = this.cluster.nodes('master');
      if (masters.length === 0) return;
      const r = await Promise.all(masters.map((m) => m.call('WAIT', this.waitReplicas, this.timeoutMs)));
      if (r.every((x) => (x as number) >= this.waitReplicas)) this.markUp();
    } catch { /* still down */ } finally {
      this.probing = false;
    }
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  whenWritable(): Promise<void> {
    return new Promise((r) => { this.waiters.push(r); });
  }

  /** Resolves once every object appended so far is acknowledged by the cluster (or the tier closed). */
  async drain(): Promise<void> {
    if (this.open >= 0) this.seal(this.open);
    while (this.flushing !== null) await this.flushing;
  }

  sealOpen(): boolean {
    if (this.open < 0 || this.bufCount[this.open] === 0) return false;
    this.seal(this.open);
    return true;
  }

  // ---------------------------------------------------------------------------------------------
  // Tier: reads

  locateBuffered(w0: number, w1: number): boolean {
    if (w0 >= this.high || this.gen[w0] !== w1 || this.bufAt[w0]! < 0) return false;
    this.locBuf = this.arena;
    this.locOff = this.bufAt[w0]!;
    return true;
  }

  readSync(): void {
    throw new ZdedupError('ERR_DISK_READ', 'the remote tier cannot be read synchronously (use the async load calls)');
  }

  async read(w0: number, w1: number, _id: number, len: number, _fpLo: number, _fpHi: number, dst: Uint8Array, dstOff: number): Promise<void> {
    if (w0 >= this.high || this.gen[w0] !== w1 || this.lens[w0] !== len) throw this.readError('stale remote location');
    if (this.bufAt[w0]! >= 0) { // still buffered (the write is not acknowledged yet)
      dst.set(this.arena.subarray(this.bufAt[w0]!, this.bufAt[w0]! + len), dstOff);
      return;
    }
    // Everything the read needs is captured now: the slot may be released meanwhile.
    const key = redisKey(this.prefix, this.keyW, w0 * 4);
    const k0 = this.keyW[w0 * 4]!, k1 = this.keyW[w0 * 4 + 1]!, k2 = this.keyW[w0 * 4 + 2]!, k3 = this.keyW[w0 * 4 + 3]!;
    const expectCodec = this.codecs[w0]!;
    const t0 = process.hrtime.bigint();
    const deadline = Date.now() + this.timeoutMs;
    let v: Buffer | null = null;
    for (let attempt = 0; ; attempt++) {
      let why: string;
      try {
        v = await this.cluster.getBuffer(key);
        if (v !== null) break;
        // Missing: lost, or asked of a node that has just restarted empty and still believes it
        // serves the slot (it learns otherwise within a cluster-node-timeout). Ask again until the bound.
        why = 'remote object missing (its key expired, or a failover lost it)';
      } catch (e) {
        this.noteError(e);
        why = `remote object unreachable: ${e instanceof Error ? e.message : String(e)}`;
      }
      if (Date.now() + 50 > deadline || this.closed) {
        if (v === null && why.startsWith('remote object missing')) this.c.remote_lost_objects++;
        throw this.readError(why);
      }
      this.c.remote_retries++;
      await sleep(Math.min(25 * 2 ** attempt, 250));
    }
    this.c.remote_bytes_received += v.length;
    const codec = checkValue(v, this.P);
    if (typeof codec === 'string') throw this.readError(`bad remote value: ${codec}`);
    const plen = v.length - VALUE_HEADER;
    if (codec === expectCodec && plen === len) {
      dst.set(v.subarray(VALUE_HEADER), dstOff);
    } else {
      this.transcode(v, codec, plen, expectCodec, len, [k0, k1, k2, k3], dst, dstOff);
    }
    this.c.remote_loads++;
    this.lat[this.latN++ % LATENCY_RING] = Number(process.hrtime.bigint() - t0) / 1000;
  }

  /**
   * Another host stored this content with another codec (or level): decode it, prove it is the
   * page of this key (the keyed hash), and re-encode it the way the core stored it.
   */
  private transcode(v: Buffer, codec: number, plen: number, expectCodec: number, len: number, key: number[], dst: Uint8Array, dstOff: number): void {
    const P = this.P;
    const page = Buffer.allocUnsafe(P);
    if (codec === 0) { if (plen !== P) throw this.readError('bad remote value: raw payload is not a page'); v.copy(page, 0, VALUE_HEADER); }
    else if (!this.decoder(codec).decompress(v.subarray(VALUE_HEADER), plen, page, P)) throw this.readError('bad remote value: does not decompress');
    const k = new Uint32Array(4);
    contentKey(this.kDomain, page, P, k, 0);
    if (k[0] !== key[0] || k[1] !== key[1] || k[2] !== key[2] || k[3] !== key[3]) throw this.readError('bad remote value: content does not match its key');
    if (len === P && expectCodec === 0) { dst.set(page, dstOff); return; }
    const out = Buffer.allocUnsafe(P);
    const n = this.codec.compress(page, P, out, len);
    if (n !== len) throw this.readError(`remote object was stored with another codec and re-encodes to ${n} bytes, not ${len}`);
    dst.set(out.subarray(0, n), dstOff);
  }

  private readError(msg: string): ZdedupError {
    this.c.remote_errors++;
    return new ZdedupError('ERR_DISK_READ', msg);
  }

  pin(w0: number): void { if (w0 < this.high) this.pins[w0]!++; }

  unpin(w0: number): void {
    if (w0 >= this.high) return;
    if (--this.pins[w0]! === 0 && this.state[w0] === FREE) this.freeSlots[this.nFree++] = w0;
  }

  /** The object is not referenced here any more: stop renewing it (its key expires unless another host renews it). */
  release(w0: number, w1: number): void {
    if (w0 >= this.high || this.gen[w0] !== w1) return;
    const st = this.state[w0]!;
    if (st === PENDING) this.state[w0] = DROPPED; // freed when its batch ends
    else if (st === STORED) this.freeSlot(w0);
  }

  // ---------------------------------------------------------------------------------------------
  // Leases

  /** Renews the lease of every object held here; keys found missing are counted (remote_errors) and logged. */
  async renewAll(): Promise<void> {
    if (this.renewing || this.closed) return;
    this.renewing = true;
    try {
      let chunk: number[] = [];
      for (let s = 0; s < this.high; s++) {
        if (this.state[s] !== STORED) continue;
        chunk.push(s);
        if (chunk.length === RENEW_CHUNK) { await this.renewChunk(chunk); chunk = []; }
      }
      if (chunk.length > 0) await this.renewChunk(chunk);
    } finally {
      this.renewing = false;
    }
  }

  private async renewChunk(slots: number[]): Promise<void> {
    let missing = 0;
    await Promise.all([...this.groupByNode(slots).values()].map(async (g) => {
      try {
        const p = this.cluster.pipeline();
        for (const s of g) p.pexpire(redisKey(this.prefix, this.keyW, s * 4), this.leaseMs);
        p.call('WAIT', this.waitReplicas, this.timeoutMs);
        const r = await p.exec();
        for (let i = 0; i < g.length; i++) {
          const [err, res] = r![i]!;
          if (err || res !== 0 || this.state[g[i]!] !== STORED) continue;
          // Not there: lost, or a node that restarted empty answered before it learnt it no longer
          // serves the slot. Counted; loads decide (they retry within their bound, then EIO).
          this.c.remote_errors++;
          missing++;
        }
      } catch (e) {
        this.c.remote_errors++; // renewed next round: the lease has two more rounds of margin
        this.noteError(e);
      }
    }));
    if (missing > 0) this.events('warn', 'remote tier: objects missing from the cluster at lease renewal', { missing });
  }

  // ---------------------------------------------------------------------------------------------
  // Tier: what a remote tier does not have (cleaning is the cluster's business)

  cleaningCandidates(): number[] { return []; }
  clean(_segment: number, _owner: CleaningOwner): Promise<CleanResult> { return Promise.resolve({ outcome: 'gone', moved_records: 0, moved_bytes: 0 }); }
  needsCleaning(): boolean { return false; }

  remoteStats(): RemoteStats {
    const c = this.c;
    let p50 = 0, p99 = 0;
    const n = Math.min(this.latN, LATENCY_RING);
    if (n > 0) {
      const s = Float64Array.from(this.lat.subarray(0, n)).sort();
      p50 = s[Math.floor(n * 0.5)]!;
      p99 = s[Math.min(n - 1, Math.floor(n * 0.99))]!;
    }
    return { ...c, remote_hit_latency_p50_us: Math.round(p50), remote_hit_latency_p99_us: Math.round(p99) };
  }

  stats(): TierStats {
    return { ...NO_TIER_STATS, ...this.remoteStats() };
  }

  /** Test hook: overwrites one payload byte of the stored value (or the buffered copy). */
  async corruptRemoteForTest(w0: number): Promise<void> {
    if (this.bufAt[w0]! >= 0) { this.arena[this.bufAt[w0]! + (this.lens[w0]! >> 1)]! ^= 0x5a; return; }
    const key = redisKey(this.prefix, this.keyW, w0 * 4);
    const v = await this.cluster.getBuffer(key);
    if (v === null) return;
    v[VALUE_HEADER + ((v.length - VALUE_HEADER) >> 1)]! ^= 0x5a;
    await this.cluster.set(key, v, 'KEEPTTL');
  }

  /** Waits (bounded) for writes under way, then disconnects. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.open >= 0) this.seal(this.open);
    if (this.flushing !== null) await Promise.race([this.flushing, sleep(this.timeoutMs)]);
    this.closed = true;
    if (this.renewTimer) clearInterval(this.renewTimer);
    if (this.probeTimer) clearInterval(this.probeTimer);
    this.wake();
    this.cluster.disconnect();
  }
}

