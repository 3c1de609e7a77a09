/**
 * The real kernel swaps to zdedup with a bounded RAM pool and a disk tier:
 *
 *   workload (memory cgroup, limit 64 MiB, swap preferred)
 *      | writes 5 x 64 MiB of known pages: zero, same-filled, duplicate, text, random
 *      v
 *   kernel swap -> /dev/loopN (direct I/O) -> FUSE file -> nbdfuse -> unix socket
 *      -> `zdedup serve --max-pool 32M --backing <tmp>/b.img --backing-size 1G`
 *                      \______ no-swap memory cgroup _______/
 *
 * The workload's swapped-out pages (~256 MiB, ~100 MiB of them unique after compression) cannot
 * fit in the 32 MiB pool: the writer moves the coldest objects, still compressed, into the
 * backing file's segments, and the kernel's swap-ins read them back through the async load path.
 * Proves, through the stock kernel: every page the workload wrote verifies after swapping;
 * written_back_pages > 0 and disk_loads > 0 (/stats) while the pool stayed within its limit;
 * discards from the kernel release pages wherever they live; `zdedup swap off` undoes it all.
 * Same setup and cleanup as kernel-swap.test.ts (which covers the RAM-only server): both use
 * kernel-swap-harness.ts.
 *
 * Needs root, /dev/fuse, loop, a memory cgroup, nbdfuse, losetup, swapon, gcc: otherwise skipped,
 * saying which.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { fetchStats } from '../../src/frontends/swap/status.js';
import {
  assertPeakShared, awaitDiscards, buildWorkload, EXPORT_SIZE, KERNEL_SWAP_TIMEOUT_MS, missingPrerequisite, n, REPO, runWorkload,
  startRig, startServer, swapOffChecked, swapOn,
} from './kernel-swap-harness.js';

const POOL_MIB = 32;

const missing = missingPrerequisite();

test('the kernel swaps through zdedup with --max-pool 32M and a disk tier: every page verifies, objects go to disk and come back',
  { timeout: KERNEL_SWAP_TIMEOUT_MS }, async (t) => {
    if (missing !== null) {
      t.skip(`needs root, /dev/fuse and loop: ${missing}`);
      return;
    }
    const rig = await startRig(t, 'zdedup-kswap-tier-', 'zdedup-test-tier');
    const { dir, socket, http } = rig;
    const workload = buildWorkload(rig);

    // ---- the server, in a group that cannot swap ------------------------------------------------
    const { serverCg, server } = await startServer(rig, process.execPath, [join(REPO, 'bin/zdedup.js'), 'serve', '--socket', socket, '--size', EXPORT_SIZE,
      '--codec', 'lz4', '--http', http, '--max-pool', `${POOL_MIB}M`, '--backing', join(dir, 'b.img'), '--backing-size', '1G'], true);

    const { device, nbdfusePid } = swapOn(rig, serverCg);
    const before = await fetchStats(http);

    const { written, peak } = await runWorkload(rig, workload, device, true);

    assert.ok(before !== null && before.ok && peak !== null);
    assertPeakShared(rig, peak, written);
    assert.equal(n(peak, 'max_pool_bytes'), POOL_MIB * 2 ** 20);
    assert.ok(n(peak, 'pool_total_size') <= POOL_MIB * 2 ** 20, `pool_total_size ${n(peak, 'pool_total_size')} over its limit`);
    assert.ok(n(peak, 'compressed_bytes') > 2 * POOL_MIB * 2 ** 20, `the swapped data overflows the pool (compressed_bytes ${n(peak, 'compressed_bytes')})`);
    assert.ok(n(peak, 'written_back_pages') > 0, 'objects were written back to the disk tier');
    assert.ok(n(peak, 'disk_objects') > 0 && n(peak, 'disk_segments') > 0, 'objects live in disk segments');
    const afterVerify = await fetchStats(http);
    assert.ok(afterVerify.ok);
    t.diagnostic(`stats after the workload verified: ${JSON.stringify(afterVerify.stats)}`);
    assert.ok(n(afterVerify.stats, 'disk_loads') > 0, 'swap-ins were served from the disk tier');
    assert.equal(n(afterVerify.stats, 'disk_read_errors'), 0);
    assert.equal(n(afterVerify.stats, 'decompress_fail'), 0);

    const after = await awaitDiscards(rig, peak);
    t.diagnostic(`after exit: stored_pages ${String(peak['stored_pages'])} -> ${String(after['stored_pages'])}, disk_objects ${n(peak, 'disk_objects')} -> ${String(after['disk_objects'])}`);
    assert.ok(n(after, 'disk_objects') < n(peak, 'disk_objects') / 2, 'discards released objects that lived on disk');

    swapOffChecked(rig, serverCg, server, device, nbdfusePid);
  });
