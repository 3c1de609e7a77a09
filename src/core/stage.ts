/**
 * The compression stage: new pages are compressed by worker threads while the store goes on.
 *
 * Without it, every new page is compressed on the one JS thread that also parses NBD requests,
 * hashes, looks up and allocates: on this 2-core machine that thread was the bottleneck of every
 * write (measured: zstd-3 alone is ~300 MB/s of process-image pages on one core). With it, a new
 * object is *staged*: its raw bytes are copied into a slot of a shared ring, it is indexed at once
 * (later duplicates find it, loads copy it out of the ring), and a worker compresses the slot into
 * the slot's output area. The store installs the result in the pool when the worker is done: the
 * object's location changes from "staged" to RAM, as the cold pass moves objects between RAM
 * locations. Nothing waits: the store's answer is final when the page is staged.
 *
 *   main thread                                   worker w (one of --compress-threads)
 *   stage(id, page): slot s from the free list
 *     ring[s] = page; jobs_w.push(s) ─────────▶   s = jobs_w.pop(); len = compress(ring[s] -> out[s])
 *     (notify when the worker sleeps)             lens[s] = len; done_w.push(s)
 *   drain(): for s in done_w  ◀──────────────────  postMessage() once until main drains again
 *     live: install(id, out[s] | ring[s]); free s
 *     forgotten (the object died meanwhile): free s
 *
 * Memory: one SharedArrayBuffer of 2 x slots pages (ring + outputs) plus a few Int32 per slot,
 * allocated once (`bytes()`, the stat stage_bytes). A full ring is not a wait: the caller
 * compresses inline, as without the stage, so the stage only ever adds throughput.
 *
 * Contracts:
 * - A slot belongs to exactly one of: the free list, a worker's job queue, a worker's done queue,
 *   or the store's "compressed, not installed yet" list. Its ring bytes never change while it is
 *   staged, so loads and dedup comparisons may read them at any time on the main thread.
 * - The queues are single-producer single-consumer rings of slot numbers in shared memory, one
 *   pair per worker, each as long as the ring: they cannot overflow.
 * - An object freed while staged is forgotten (its slot marked dead); its slot returns to the
 *   free list only when drain() meets it: after the worker's answer for it (the worker may still
 *   be writing the slot's output), never inside an install. Object ids are reused, so a slot is never found by id
 *   once forgotten.
 * - A worker that fails (error, exit) is retired: the jobs it held are compressed on the main
 *   thread at once, and no new job goes to it. With no worker left, canStage() is false.
 */
import { Worker } from 'node:worker_threads';

/** Control words per worker (Int32 indexes into ctl). */
export const JOB_HEAD = 0; // written by the worker
export const JOB_TAIL = 1; // written by main
export const DONE_TAIL = 2; // written by the worker
export const SLEEPING = 3; // 1 while the worker waits for jobs
export const SIGNALED = 4; // 1 from the worker's "done" message until main's handler of it runs
export const STOP = 5; // set by main: the worker exits
export const CTL_WORDS = 8;
/** The worker's first message: its codec is loaded. Later messages (0) mean "answers are waiting". */
export const READY = 1;

/** How long close() lets a worker end by itself (it may still be loading its codec) before terminate(). */
const CLOSE_GRACE_MS = 5000;
/** Longest settle() waits for the workers (a full stage compresses in a few ms). */
const SETTLE_MAX_MS = 5000;
const FREE = -1;
const DEAD = -2;

/** What the stage's worker receives (compress-worker.ts). */
export interface StageWorkerData {
  sab: SharedArrayBuffer;
  slots: number;
  pageSize: number;
  codec: string;
  cap: number;
  worker: number;
  workers: number;
}

/** Byte layout of the shared buffer: [ring | out | lens (Int32 x slots) | per worker: ctl, jobs, done]. */
export function stageLayout(slots: number, pageSize: number, workers: number): { ring: number; out: number; lens: number; ctl: number; jobs: number; done: number; perWorker: number; total: number } {
  const ring = 0;
  const out = slots * pageSize;
  const lens = out + slots * pageSize;
  const ctl = lens + slots * 4;
  const perWorker = (CTL_WORDS + 2 * slots) * 4;
  return { ring, out, lens, ctl, jobs: CTL_WORDS * 4, done: (CTL_WORDS + slots) * 4, perWorker, total: ctl + workers * perWorker };
}

/** Installs a compressed object: returns false to keep it staged and be asked again later. */
export type Install = (id: number, area: number, len: number, bytes: Uint8Array) => boolean;

export class CompressStage {
  readonly slots: number;
  readonly pageSize: number;
  private readonly sab: SharedArrayBuffer;
  private readonly lens: Int32Array;
  private readonly ctl: Int32Array[] = [];
  private readonly jobs: Int32Array[] = [];
  private readonly done: Int32Array[] = [];
  private readonly doneHead: number[] = [];
  private readonly jobTail: number[] = [];
  private readonly workers: (Worker | null)[] = [];
  /** Views of each slot's raw page and output area (made once, not per page). */
  private readonly ringView: Uint8Array[] = [];
  private readonly outView: Uint8Array[] = [];
  /** Per slot: the object staged in it, FREE, or DEAD (forgotten, its worker answer not drained yet). */
  private readonly slotObj: Int32Array;
  private readonly slotArea: Uint16Array;
  /** Free slots (a stack). */
  private readonly free: Int32Array;
  private freeCount: number;
  /** Slots compressed but not installed (install() said not yet); retried at each drain. */
  private readonly waiting: Int32Array;
  private waitingCount = 0;
  /** id -> slot: open addressing over 4 x slots cells (keys: id + 1, 0 = empty). */
  private readonly mapKey: Int32Array;
  private readonly mapVal: Int32Array;
  private readonly mapMask: number;
  /** Objects staged (in a slot and not forgotten). */
  staged = 0;
  /** Slots handed to workers and not drained yet. */
  private inWorkers = 0;
  private live = 0;
  private rr = 0;
  private closing = false;
  private readonly codec: { compress(src: Uint8Array, n: number, dst: Uint8Array, cap: number): number };
  private readonly cap: number;
  /** Called (from a worker message) when completions are waiting to be drained. */
  onDone: () => void = () => {};
  /** Called once per failed worker (for the log). */
  onWorkerError: (worker: number, err: Error) => void = () => {};

  /**
   * `codec`: the store's codec (its spec is what the workers load; its compress() is what main
   * uses for a retired worker's jobs); `cap`: the incompressible cap (0 = store raw).
   */
  constructor(opts: { slots: number; pageSize: number; threads: number; codec: { spec: string; compress(src: Uint8Array, n: number, dst: Uint8Array, cap: number): number }; cap: number }) {
    const { slots, pageSize: P, threads } = opts;
    if (!(threads >= 1) || !(slots >= 1) || slots > 65536) throw new RangeError('stage needs >= 1 thread and 1..65536 slots');
    this.slots = slots;
    this.pageSize = P;
    this.codec = opts.codec;
    this.cap = opts.cap;
    const lay = stageLayout(slots, P, threads);
    this.sab = new SharedArrayBuffer(lay.total);
    this.lens = new Int32Array(this.sab, lay.lens, slots);
    for (let s = 0; s < slots; s++) {
      this.ringView.push(new Uint8Array(this.sab, lay.ring + s * P, P));
      this.outView.push(new Uint8Array(this.sab, lay.out + s * P, P));
    }
    this.slotObj = new Int32Array(slots).fill(FREE);
    this.slotArea = new Uint16Array(slots);
    this.free = new Int32Array(slots);
    for (let s = 0; s < slots; s++) this.free[s] = slots - 1 - s;
    this.freeCount = slots;
    this.waiting = new Int32Array(slots);
    let cells = 4;
    while (cells < 4 * slots) cells *= 2;
    this.mapKey = new Int32Array(cells);
    this.mapVal = new Int32Array(cells);
    this.mapMask = cells - 1;
    const url = new URL('./compress-worker.js', import.meta.url);
    for (let w = 0; w < threads; w++) {
      const base = lay.ctl + w * lay.perWorker;
      this.ctl.push(new Int32Array(this.sab, base, CTL_WORDS));
      this.jobs.push(new Int32Array(this.sab, base + lay.jobs, slots));
      this.done.push(new Int32Array(this.sab, base + lay.done, slots));
      this.doneHead.push(0);
      this.jobTail.push(0);
      const data: StageWorkerData = { sab: this.sab, slots, pageSize: P, codec: opts.codec.spec, cap: opts.cap, worker: w, workers: threads };
      // A small heap: the worker only compresses between shared buffers.
      const worker = new Worker(url, { workerData: data, resourceLimits: { maxYoungGenerationSizeMb: 1, maxOldGenerationSizeMb: 16 }, stdout: false, stderr: false });
      // Referenced until it says it is ready: a process that ends while a worker still loads its
      // native codec library would tear that load down, which aborts Node (see close()).
      // Only this handler re-arms the worker's message (SIGNALED): opportunistic drains on the
      // store's own calls do not, so at most one message per worker is ever in flight. (Re-arming
      // on every drain let a worker that outpaces the request thread post one message per page.)
      worker.on('message', (m: number) => {
        if (m === READY) { worker.unref(); return; }
        Atomics.store(this.ctl[w]!, SIGNALED, 0);
        if (!this.closing) this.onDone();
      });
      worker.on('error', (e) => this.retire(w, e));
      worker.on('exit', (code) => { if (!this.closing) this.retire(w, new Error(`compression worker exited (code ${code})`)); });
      this.workers.push(worker);
      this.live++;
    }
  }

  /** Bytes of shared memory held (the stat stage_bytes). */
  bytes(): number { return this.sab.byteLength; }

  /** A slot is free and a worker is alive. */
  canStage(): boolean { return this.freeCount > 0 && this.live > 0; }

  /** Copies `page` into a free slot and queues it; the caller checked canStage(). */
  stage(id: number, area: number, page: Uint8Array): void {
    const s = this.free[--this.freeCount]!;
    this.ringView[s]!.set(page);
    this.slotObj[s] = id;
    this.slotArea[s] = area;
    this.mapSet(id, s);
    this.staged++;
    // The live worker with the shortest queue.
    let best = -1, bestLen = 0;
    for (let k = 0; k < this.workers.length; k++) {
      const w = (this.rr + k) % this.workers.length;
      if (this.workers[w] === null) continue;
      const q = this.jobTail[w]! - Atomics.load(this.ctl[w]!, JOB_HEAD);
      if (best < 0 || q < bestLen) { best = w; bestLen = q; if (q === 0) break; }
    }
    this.rr = (best + 1) % this.workers.length;
    const t = this.jobTail[best]!;
    this.jobs[best]![t % this.slots] = s;
    this.jobTail[best] = t + 1;
    this.inWorkers++;
    const c = this.ctl[best]!;
    Atomics.store(c, JOB_TAIL, t + 1);
    if (Atomics.load(c, SLEEPING) !== 0) Atomics.notify(c, JOB_TAIL);
  }

  /** The slot holding staged object `id`, or -1. */
  slotOf(id: number): number {
    const k = id + 1;
    for (let i = Math.imul(k, 0x9e3779b1) & this.mapMask; ; i = (i + 1) & this.mapMask) {
      const x = this.mapKey[i]!;
      if (x === k) return this.mapVal[i]!;
      if (x === 0) return -1;
    }
  }

  /** The raw page of a staged slot (read-only: valid until the object is installed or forgotten). */
  page(slot: number): Uint8Array { return this.ringView[slot]!; }

  /** Object `id` was freed while staged: its slot is dead until its worker answer is drained. */
  forget(id: number): void {
    const s = this.slotOf(id);
    if (s < 0) throw new Error(`object ${id} is not staged`);
    this.mapDelete(id);
    this.staged--;
    // Dead until drain() meets it (in a done queue, or in the waiting list): never released
    // here, since forget() can run inside an install() that drain() is in the middle of (an
    // install that makes room by dropping ephemeral pages can free another staged object).
    this.slotObj[s] = DEAD;
  }

  /**
   * Takes every answer the workers have given: installs live objects (install() returning false
   * keeps one for the next drain), frees dead slots. Returns the objects installed.
   */
  drain(install: Install): number {
    let n = 0;
    for (let w = 0; w < this.workers.length; w++) {
      const c = this.ctl[w]!;
      const tail = Atomics.load(c, DONE_TAIL);
      let h = this.doneHead[w]!;
      const done = this.done[w]!;
      while (h !== tail) {
        const s = done[h % this.slots]!;
        h++;
        this.inWorkers--;
        if (this.slotObj[s] === DEAD) { this.release(s); continue; }
        if (this.finish(s, install)) n++;
      }
      this.doneHead[w] = h;
    }
    if (this.waitingCount > 0) {
      // Only this loop removes entries (forget() marks them DEAD), so index i still holds s.
      for (let i = 0; i < this.waitingCount;) {
        const s = this.waiting[i]!;
        if (this.slotObj[s] === DEAD) { this.waiting[i] = this.waiting[--this.waitingCount]!; this.release(s); continue; }
        if (this.tryInstall(s, install)) { this.waiting[i] = this.waiting[--this.waitingCount]!; n++; } else i++;
      }
    }
    return n;
  }

  /** Slots in workers' hands (queued or being compressed). */
  busy(): number { return this.inWorkers; }

  /**
   * Blocks the calling (main) thread until the workers have answered every job, then drains:
   * for tests, stats that must be exact, and close. Bounded by one ring's worth of compression.
   */
  settle(install: Install): void {
    const nap = new Int32Array(new SharedArrayBuffer(4));
    this.drain(install);
    // A worker that died is retired only from the event loop (its 'exit'), which this blocks:
    // give up after SETTLE_MAX_MS rather than wait for answers that will never come.
    const deadline = performance.now() + SETTLE_MAX_MS;
    while (this.inWorkers > 0 && this.live > 0 && performance.now() < deadline) {
      Atomics.wait(nap, 0, 0, 0.2);
      this.drain(install);
    }
  }

  /** Test hook: worker w (to make it fail). */
  workerForTest(w: number): Worker | null { return this.workers[w] ?? null; }

  /** Stops the workers; staged objects stay readable (their raw pages are kept). */
  async close(): Promise<void> {
    this.closing = true;
    const ws = this.workers.filter((w): w is Worker => w !== null);
    const exited = ws.map((w) => new Promise<void>((r) => { w.once('exit', () => r()); }));
    for (let w = 0; w < this.workers.length; w++) {
      Atomics.store(this.ctl[w]!, STOP, 1);
      Atomics.notify(this.ctl[w]!, JOB_TAIL);
    }
    // The workers leave their loop and end by themselves: terminate() while one is still loading
    // its native codec library aborted the whole process (a N-API exception during teardown,
    // seen when a store was closed right after it was created). terminate() only as a fallback.
    await Promise.all(ws.map(async (w, i) => {
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<'late'>((r) => { timer = setTimeout(() => r('late'), CLOSE_GRACE_MS); });
      if (await Promise.race([exited[i]!.then(() => 'ok' as const), late]) === 'late') await w.terminate();
      clearTimeout(timer);
    }));
    this.live = 0;
  }

  // ---- internals ----------------------------------------------------------------------------

  private finish(s: number, install: Install): boolean {
    if (this.tryInstall(s, install)) return true;
    this.waiting[this.waitingCount++] = s;
    return false;
  }

  private tryInstall(s: number, install: Install): boolean {
    const id = this.slotObj[s]!;
    const len = this.lens[s]!;
    if (!install(id, this.slotArea[s]!, len, len === 0 ? this.ringView[s]! : this.outView[s]!.subarray(0, len))) return false;
    this.mapDelete(id);
    this.staged--;
    this.release(s);
    return true;
  }

  private release(s: number): void {
    this.slotObj[s] = FREE;
    this.free[this.freeCount++] = s;
  }

  /**
   * A worker failed: its queued jobs are compressed here, now, and handed to the done path as if
   * it had answered them; nothing new goes to it.
   */
  private retire(w: number, err: Error): void {
    if (this.workers[w] === null || this.closing) return;
    this.workers[w] = null;
    this.live--;
    this.onWorkerError(w, err);
    const c = this.ctl[w]!;
    // Answers it gave stay in its done queue (drained as usual); what it had not answered yet:
    const answered = Atomics.load(c, DONE_TAIL);
    const jobs = this.jobs[w]!, done = this.done[w]!;
    let tail = answered;
    for (let j = answered; j !== this.jobTail[w]; j++) {
      const s = jobs[j % this.slots]!;
      this.lens[s] = this.cap > 0 ? this.codec.compress(this.ringView[s]!, this.pageSize, this.outView[s]!, this.cap) : 0;
      done[tail % this.slots] = s;
      tail++;
    }
    Atomics.store(c, DONE_TAIL, tail);
    queueMicrotask(() => this.onDone());
  }

  private mapSet(id: number, s: number): void {
    const k = id + 1;
    let i = Math.imul(k, 0x9e3779b1) & this.mapMask;
    while (this.mapKey[i] !== 0) i = (i + 1) & this.mapMask;
    this.mapKey[i] = k;
    this.mapVal[i] = s;
  }

  /** Removes id's cell, shifting later cells of its probe run back (no tombstones). */
  private mapDelete(id: number): void {
    const k = id + 1;
    const m = this.mapMask;
    let i = Math.imul(k, 0x9e3779b1) & m;
    while (this.mapKey[i] !== k) {
      if (this.mapKey[i] === 0) return;
      i = (i + 1) & m;
    }
    for (let j = (i + 1) & m; this.mapKey[j] !== 0; j = (j + 1) & m) {
      const home = Math.imul(this.mapKey[j]!, 0x9e3779b1) & m;
      // Move j into the hole at i when j's home is not in (i, j] (cyclically).
      if (((j - home) & m) >= ((j - i) & m)) {
        this.mapKey[i] = this.mapKey[j]!;
        this.mapVal[i] = this.mapVal[j]!;
        i = j;
      }
    }
    this.mapKey[i] = 0;
  }
}
