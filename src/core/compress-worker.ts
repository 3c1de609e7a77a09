/**
 * A compression worker of the stage (stage.ts): takes slot numbers from its job queue, compresses
 * the slot's raw page into the slot's output area with the store's codec, answers in its done
 * queue, and, when it has caught up, posts a message unless its last one is still unhandled
 * (the store also drains answers on its own calls). Sleeps on the job tail (Atomics.wait) when
 * it has nothing to do. Touches nothing but the shared buffer.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { parseCodec } from '../engine/codec/codec.js';
import {
  CTL_WORDS, DONE_TAIL, JOB_HEAD, JOB_TAIL, READY, SIGNALED, SLEEPING, STOP, stageLayout, type StageWorkerData,
} from './stage.js';

const d = workerData as StageWorkerData;
const P = d.pageSize;
const lay = stageLayout(d.slots, P, d.workers);
const base = lay.ctl + d.worker * lay.perWorker;
const ctl = new Int32Array(d.sab, base, CTL_WORDS);
const jobs = new Int32Array(d.sab, base + lay.jobs, d.slots);
const done = new Int32Array(d.sab, base + lay.done, d.slots);
const lens = new Int32Array(d.sab, lay.lens, d.slots);
const ring: Uint8Array[] = [];
const out: Uint8Array[] = [];
for (let s = 0; s < d.slots; s++) {
  ring.push(new Uint8Array(d.sab, lay.ring + s * P, P));
  out.push(new Uint8Array(d.sab, lay.out + s * P, P));
}
const codec = parseCodec(d.codec);
parentPort!.postMessage(READY);

let head = Atomics.load(ctl, JOB_HEAD);
let doneTail = Atomics.load(ctl, DONE_TAIL);
for (;;) {
  if (Atomics.load(ctl, STOP) !== 0) break;
  let tail = Atomics.load(ctl, JOB_TAIL);
  if (head === tail) {
    Atomics.store(ctl, SLEEPING, 1);
    tail = Atomics.load(ctl, JOB_TAIL); // main may have queued between the check and SLEEPING
    if (head === tail && Atomics.load(ctl, STOP) === 0) Atomics.wait(ctl, JOB_TAIL, tail);
    Atomics.store(ctl, SLEEPING, 0);
    continue;
  }
  while (head !== tail) {
    const s = jobs[head % d.slots]!;
    lens[s] = d.cap > 0 ? codec.compress(ring[s]!, P, out[s]!, d.cap) : 0;
    head++;
    Atomics.store(ctl, JOB_HEAD, head);
    doneTail++;
    done[(doneTail - 1) % d.slots] = s;
    Atomics.store(ctl, DONE_TAIL, doneTail);
  }
  if (Atomics.compareExchange(ctl, SIGNALED, 0, 1) === 0) parentPort!.postMessage(0);
}
