/**
 * `zdedup fsck --backing PATH [--repair] [--json]`: checks a durable backing offline (no server
 * may use it meanwhile). Two passes:
 *   1. every segment and every record, checksums included (tiers/disk/recovery.ts scanBacking):
 *      damaged records in the middle of the log, the torn tail of the last write;
 *   2. the recovery a server would do (core/durable): which pages would read as EIO, and whether a
 *      damaged journal record leaves pages that cannot be told (a server then refuses to start).
 * --repair accepts such a loss: the pages it changed keep their previous content, and a fresh
 * checkpoint is written so the damaged record is no longer needed. Pages whose data is damaged
 * stay EIO (a client rewriting them heals them); fsck never turns damage into data.
 *
 * Exit: 0 nothing damaged; 1 damage found (or left after --repair); 2 usage error or not a
 * durable backing.
 */
import fs from 'node:fs';
import type { Command } from 'commander';
import { PageStore } from '../../../core/page-store.js';
import { ZdedupError } from '../../../core/errors.js';
import { durableHeaderOf } from '../../../tiers/disk/disk-tier.js';
import { scanBacking } from '../../../tiers/disk/recovery.js';
import type { Ctx } from '../main.js';

interface FsckReport {
  backing: string;
  page_size: number;
  segment_size: number;
  segments: number;
  segments_with_records: number;
  records: number;
  objects: number;
  journal_records: number;
  checkpoint_records: number;
  bytes_read: number;
  torn_tail_bytes: number;
  damaged: { segment: number; offset: number; bytes: number; why: string }[];
  recovered_pages: number;
  lost_pages: number;
  refused: string | null;
  repaired: boolean;
  clean: boolean;
}

export function registerFsck(program: Command, ctx: Ctx): void {
  program
    .command('fsck')
    .summary('check a durable (--persist) backing offline')
    .description('Reads every segment and record of a --persist backing, checks every checksum, replays the ' +
      'journal as a restart would, and reports damage: records that failed (bit rot), the torn tail of the last ' +
      'write, pages that would read as EIO. Exit 0 clean, 1 damage, 2 usage error. Stop the server first.')
    .requiredOption('--backing <path>', 'the backing file or block device of a zdedup serve --persist')
    .option('--repair', 'accept a loss recovery cannot place (a damaged journal record): those pages keep their previous content; writes a fresh checkpoint')
    .option('--json', 'print the report as JSON')
    .addHelpText('after', `
Examples:
  zdedup fsck --backing /var/lib/zdedup/vm.img
  zdedup fsck --backing /var/lib/zdedup/vm.img --json | jq .damaged
`)
    .action(async (opts: { backing: string; repair?: boolean; json?: boolean }) => {
      const r = await fsck(opts.backing, opts.repair === true);
      if (opts.json === true) process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
      else process.stdout.write(render(r));
      ctx.exitCode = r.clean ? 0 : 1;
    });
}

export async function fsck(path: string, repair: boolean): Promise<FsckReport> {
  const h = durableHeaderOf(path);
  if (h === null) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', `${path} is not a durable zdedup backing (no valid header written by serve --persist)`);
  }
  let cfg: { codec?: string; sharedDedup?: boolean } = {};
  try { cfg = JSON.parse(h.config!.toString('utf8')) as typeof cfg; } catch { /* reported by the recovery pass */ }
  // Pass 1: every record.
  const fd = fs.openSync(path, 'r');
  let scan;
  try {
    scan = scanBacking(fd, h);
  } finally {
    fs.closeSync(fd);
  }
  let journal = 0, ckpt = 0;
  const segs = new Set<number>();
  for (const m of scan.meta) { if (m.kind === 16) journal++; else ckpt++; segs.add(m.seg); }
  for (const s of scan.objSeg) segs.add(s);
  const r: FsckReport = {
    backing: path, page_size: h.pageSize, segment_size: h.segmentSize, segments: h.segmentCount, segments_with_records: segs.size,
    records: scan.records, objects: scan.objSerial.length, journal_records: journal, checkpoint_records: ckpt, bytes_read: scan.bytesRead,
    torn_tail_bytes: scan.discardedBytes,
    damaged: scan.damage.map((d) => ({ segment: d.seg, offset: d.off, bytes: d.bytes, why: d.why })),
    recovered_pages: 0, lost_pages: 0, refused: null, repaired: false, clean: false,
  };
  // Pass 2: the recovery a restart would do (reads only; --repair writes a checkpoint).
  const open = (acceptLoss: boolean): PageStore => new PageStore({
    pageSize: h.pageSize, codec: cfg.codec, sharedDedup: cfg.sharedDedup, background: false,
    backing: { path }, persist: { acceptLoss, scanAll: true },
  });
  let store: PageStore | null = null;
  try {
    store = open(false);
  } catch (e) {
    if (!(e instanceof ZdedupError) || e.code !== 'ERR_CORRUPT') throw e;
    r.refused = e.message;
    if (repair) { store = open(true); r.repaired = true; }
  }
  if (store !== null) {
    const rep = store.recoveryReport();
    r.recovered_pages = rep?.recovered_pages ?? 0;
    r.lost_pages = rep?.recovery_lost_pages ?? 0;
    if (r.repaired) {
      for (const d of rep?.damage ?? []) if (d.seg < 0) r.damaged.push({ segment: -1, offset: 0, bytes: 0, why: d.why });
      await store.close(); // writes a checkpoint: the damaged journal record is no longer needed
    }
    // Without --repair nothing is written: the store is left unclosed (close() would write a
    // checkpoint); the process exits after the report.
  }
  r.clean = r.damaged.length === 0 && r.lost_pages === 0 && r.refused === null;
  return r;
}

function render(r: FsckReport): string {
  const lines = [
    `backing ${r.backing}: page size ${r.page_size}, ${r.segments} segments of ${r.segment_size} bytes (${r.segments_with_records} hold records)`,
    `records: ${r.records} (${r.objects} objects, ${r.journal_records} journal, ${r.checkpoint_records} checkpoint); ${r.bytes_read} bytes read`,
    `torn tail: ${r.torn_tail_bytes} bytes discarded (a write under way at a crash; not damage)`,
    `recovery: ${r.recovered_pages} pages, ${r.lost_pages} would read as EIO`,
  ];
  if (r.refused !== null) lines.push(`a server would refuse to start: ${r.refused}${r.repaired ? ' -- repaired: loss accepted, checkpoint written' : ''}`);
  for (const d of r.damaged.slice(0, 100)) lines.push(`DAMAGED ${d.segment >= 0 ? `segment ${d.segment} offset ${d.offset} (${d.bytes} bytes)` : 'journal'}: ${d.why}`);
  if (r.damaged.length > 100) lines.push(`... and ${r.damaged.length - 100} more (--json lists them all)`);
  lines.push(r.clean ? 'clean' : 'DAMAGE FOUND');
  return `${lines.join('\n')}\n`;
}
