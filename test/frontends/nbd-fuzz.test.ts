/**
 * The NBD fuzzer in `npm test`: 10,000 generated sessions (handshake and transmission, well-formed
 * and mutated, cut at random socket-write boundaries) against the real in-process server, every
 * reply checked against the reference model and the data read back after each session
 * (nbd-fuzz-harness.ts says what is generated and checked). `npm run bench:fuzz` runs 100,000.
 *
 * ZDEDUP_FUZZ_SEED=<n> replays a run; ZDEDUP_NBD_FUZZ_CASES=<n> changes the number of sessions.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runNbdFuzz } from './nbd-fuzz-harness.js';

const CASES = Number(process.env.ZDEDUP_NBD_FUZZ_CASES ?? 10_000);
const SEED = process.env.ZDEDUP_FUZZ_SEED !== undefined ? Number(process.env.ZDEDUP_FUZZ_SEED) : undefined;

test(`${CASES} fuzzed NBD sessions: every reply as the protocol prescribes, no crash, data intact`, { timeout: 600_000 }, async (t) => {
  const { counts, seed, failure } = await runNbdFuzz({ cases: CASES, seed: SEED });
  t.diagnostic(`seed ${seed}: ${JSON.stringify(counts)}`);
  assert.equal(failure, null, `seed ${seed}: ${failure}`);
  assert.equal(counts.cases, CASES);
  assert.equal(counts.crashes, 0);
  assert.equal(counts.server_errors, 0);
  // The generator must reach what it is meant to exercise (a weakened generator fails here).
  assert.ok(counts.transmission_sessions > CASES / 2, `transmission reached in ${counts.transmission_sessions} sessions`);
  assert.ok(counts.requests > CASES * 5, `${counts.requests} requests`);
  assert.ok(counts.protocol_errors > CASES / 100, `${counts.protocol_errors} protocol errors`);
  assert.ok(counts.mid_unit_disconnects > CASES / 100, `${counts.mid_unit_disconnects} mid-unit disconnects`);
  assert.ok(counts.bytes_verified > 0);
});
