/**
 * The real kernel swaps to zdedup.
 *
 *   workload (memory cgroup, limit L, swap preferred)
 *      | writes 5 x L of known pages: zero, same-filled, duplicate, text, random
 *      v
 *   kernel swap (swapon --discard, priority 32767) -> /dev/loopN (direct I/O)
 *      -> FUSE file -> nbdfuse -> unix socket -> `zdedup serve`
 *                      \______ no-swap memory cgroup _______/
 *
 * Proves, through the stock kernel and tools no one here wrote:
 *  - `zdedup swap on` attaches the export as swap at priority 32767 with discard;
 *  - every byte the workload wrote comes back after it was swapped out (the workload checks);
 *  - the server stored the pages and shared the duplicate and same-filled ones (/stats);
 *  - discards from the kernel freed the pages after the workload exited (stored_pages drops);
 *  - `zdedup swap off` undoes it all.
 * The server and nbdfuse run in a memory cgroup that cannot swap (v2 memory.swap.max=0, v1
 * swappiness 0 and no limit): a server swapped to its own device would deadlock the test.
 * Cleanup (workload, swapoff, loop, FUSE, server, cgroups) runs on success, failure and SIGINT.
 *
 * Needs root, /dev/fuse, loop, a memory cgroup, nbdfuse, losetup, swapon, gcc: otherwise skipped,
 * saying which. ZDEDUP_KERNEL_TEST_SERVER=nbdkit runs the same kernel path against nbdkit's
 * memory plugin (for debugging the attach path; the /stats assertions are then skipped).
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { fetchStats } from '../../src/frontends/swap/status.js';
import {
  assertPeakShared, awaitDiscards, buildWorkload, EXPORT_SIZE, KERNEL_SWAP_TIMEOUT_MS, missingPrerequisite, REPO, runWorkload,
  startRig, startServer, swapOffChecked, swapOn,
} from './kernel-swap-harness.js';

const USE_NBDKIT = process.env['ZDEDUP_KERNEL_TEST_SERVER'] === 'nbdkit';

const missing = missingPrerequisite(USE_NBDKIT ? ['nbdkit'] : []);

test('the kernel swaps through zdedup (nbdfuse + loop): every byte returns, duplicates are shared, discards free pages',
  { timeout: KERNEL_SWAP_TIMEOUT_MS }, async (t) => {
    if (missing !== null) {
      t.skip(`needs root, /dev/fuse and loop: ${missing}`);
      return;
    }
    const rig = await startRig(t, 'zdedup-kswap-', 'zdedup-test');
    const { socket, http } = rig;
    const workload = buildWorkload(rig);

    // ---- the server, in a group that cannot swap ------------------------------------------------
    const serverCmd: [string, string[]] = USE_NBDKIT
      ? ['nbdkit', ['-f', '-U', socket, 'memory', EXPORT_SIZE]]
      : [process.execPath, [join(REPO, 'bin/zdedup.js'), 'serve', '--socket', socket, '--size', EXPORT_SIZE, '--codec', 'lz4', '--http', http]];
    const { serverCg, server } = await startServer(rig, serverCmd[0], serverCmd[1], !USE_NBDKIT);

    const { device, nbdfusePid } = swapOn(rig, serverCg);
    const before = USE_NBDKIT ? null : await fetchStats(http);

    const { written, peak } = await runWorkload(rig, workload, device, !USE_NBDKIT);

    if (USE_NBDKIT) {
      t.diagnostic('ZDEDUP_KERNEL_TEST_SERVER=nbdkit: /stats assertions skipped');
    } else {
      assert.ok(before !== null && before.ok && peak !== null);
      assertPeakShared(rig, peak, written);
      const after = await awaitDiscards(rig, peak);
      t.diagnostic(`after exit: stored_pages ${String(peak['stored_pages'])} -> ${String(after['stored_pages'])}`);
    }

    swapOffChecked(rig, serverCg, server, device, nbdfusePid);
  });
