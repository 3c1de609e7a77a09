/**
 * `npm run bench`: the page store on each corpus, beside the codec alone, in one run.
 *
 * For every corpus and codec (lz4, zstd:3): store MB/s, load MB/s, bytes held per stored page
 * (pool + metadata), effective ratio; the codec alone (compress and decompress MB/s, bytes) as the
 * anchor, and the ratios store/codec, load/decompress, held/codec-alone-distinct. Each case runs
 * 3 times; throughput is the best run (least disturbed), sizes are identical across runs.
 * Then metadata bytes per page at 4 million pages (all-unique and mixed streams).
 * Results: bench/results/page-store-<date>.{json,md}.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runFileBench, type FileBenchResult } from '../src/frontends/cli/commands/bench.js';
import { PageStore } from '../src/core/page-store.js';
import { buildCorpus, PAGE, Rng, textPage } from './corpora.js';
import { buildProcessImage } from './process-image.js';
import { describeMachine, machineMarkdown } from './machine.js';

const CORPUS_PAGES = Number(process.env.ZDEDUP_BENCH_PAGES ?? 65536); // 256 MiB
const RUNS = Number(process.env.ZDEDUP_BENCH_RUNS ?? 3);
const META_PAGES = Number(process.env.ZDEDUP_BENCH_META_PAGES ?? 4 * 1024 * 1024);

interface Row {
  corpus: string; codec: string; pages: number;
  store_mbps: number; load_mbps: number; codec_mbps: number; codec_decompress_mbps: number;
  store_vs_codec: number; load_vs_decompress: number;
  bytes_per_stored_page: number; effective_ratio: number; codec_alone_ratio: number;
  overhead_ratio: number; metadata_bytes_per_page: number;
  same_filled_pages: number; duplicate_pages: number; unique_objects: number;
  full: FileBenchResult;
}

function best(file: string, codec: string): FileBenchResult {
  let r: FileBenchResult | undefined;
  for (let i = 0; i < RUNS; i++) {
    const x = runFileBench(file, { codec });
    if (x.mismatched_pages !== 0) throw new Error(`${file} ${codec}: ${x.mismatched_pages} pages read back differ`);
    if (!r) r = x;
    else {
      r.store_mbps = Math.max(r.store_mbps, x.store_mbps);
      r.load_mbps = Math.max(r.load_mbps, x.load_mbps);
      r.codec_alone_mbps = Math.max(r.codec_alone_mbps, x.codec_alone_mbps);
      r.codec_alone_decompress_mbps = Math.max(r.codec_alone_decompress_mbps, x.codec_alone_decompress_mbps);
    }
  }
  return r!;
}

/** Metadata per stored page at `pages` pages, on a generated stream (no file). */
function metadataAtScale(pages: number, mix: 'unique' | 'mixed'): Record<string, number | string> {
  const store = new PageStore({ codec: 'lz4' });
  const a = store.createArea('m', pages);
  const rng = new Rng(99);
  const template = Buffer.alloc(PAGE);
  textPage(rng, template);
  const page = Buffer.alloc(PAGE);
  const dups: Buffer[] = [];
  for (let i = 0; i < 1024; i++) { const d = Buffer.alloc(PAGE); textPage(rng, d); dups.push(d); }
  const t = process.hrtime.bigint();
  for (let i = 0; i < pages; i++) {
    const r = mix === 'unique' ? 3 : rng.below(10);
    if (r < 4) page.fill(0);                      // mixed: 40% zero
    else if (r < 6) dups[rng.below(1024)]!.copy(page); // 20% duplicates of 1024 pages
    else { template.copy(page); page.writeUInt32LE(i, 0); page.writeUInt32LE(rng.next(), 2048); } // unique
    if (mix === 'unique') { template.copy(page); page.writeUInt32LE(i, 0); page.writeUInt32LE(rng.next(), 2048); }
    store.store(a, i, page);
  }
  const sec = Number(process.hrtime.bigint() - t) / 1e9;
  const s = store.stats();
  return {
    mix, pages, unique_objects: s.unique_objects, same_filled_pages: s.same_filled_pages,
    metadata_bytes: s.metadata_bytes, metadata_bytes_per_page: s.metadata_bytes / s.stored_pages,
    metadata_bytes_per_object: s.metadata_bytes / Math.max(1, s.unique_objects),
    store_mbps: (pages * PAGE) / sec / 1e6,
  };
}

/**
 * Compaction after churn: store `file`, invalidate 2 of every 3 pages at random, then run
 * bounded compaction steps until one frees nothing. Reports the pool before and after, the
 * compressed bytes it holds, the number of steps and the longest step (what a request may wait).
 */
function compactionAfterChurn(file: string): Record<string, number> {
  const data = readFileSync(file);
  const pages = data.length / PAGE;
  const store = new PageStore({ codec: 'lz4' });
  const a = store.createArea('c', pages);
  store.storeBatch(a, 0, data);
  const rng = new Rng(4242);
  for (let i = 0; i < pages; i++) if (rng.below(3) !== 0) store.invalidatePage(a, i);
  const before = store.stats();
  let steps = 0, maxMs = 0, totalMs = 0;
  for (;;) {
    const t = process.hrtime.bigint();
    const r = store.compact();
    const ms = Number(process.hrtime.bigint() - t) / 1e6;
    if (r.moved_objects + r.moved_zspages + r.freed_arenas === 0) break;
    steps++; maxMs = Math.max(maxMs, ms); totalMs += ms;
  }
  const after = store.stats();
  return {
    pages, live_pages: after.stored_pages, compressed_bytes: after.compressed_bytes,
    pool_before: before.pool_total_size, pool_after: after.pool_total_size, steps, max_step_ms: maxMs, total_ms: totalMs,
  };
}

function f(n: number, d = 1): string { return n.toFixed(d); }

async function main(): Promise<void> {
  const machine = describeMachine();
  const corpora: { name: string; file: string; note?: string }[] = [];
  try {
    const img = await buildProcessImage();
    corpora.push({ name: 'process-image', file: img.path, note: img.sources.map((s) => `${s.name} ${s.pages} pages`).join(', ') });
  } catch (e) {
    process.stderr.write(`bench: skipping the process-image corpus: ${(e as Error).message}\n`);
  }
  for (const name of ['zero-heavy', 'duplicate-heavy', 'text', 'random']) corpora.push({ name, file: buildCorpus(name, CORPUS_PAGES) });

  const rows: Row[] = [];
  for (const c of corpora) {
    for (const codec of ['lz4', 'zstd:3']) {
      process.stderr.write(`bench: ${c.name} ${codec}\n`);
      const r = best(c.file, codec);
      const held = r.pool_total_size + r.metadata_bytes;
      rows.push({
        corpus: c.name, codec, pages: r.pages,
        store_mbps: r.store_mbps, load_mbps: r.load_mbps, codec_mbps: r.codec_alone_mbps, codec_decompress_mbps: r.codec_alone_decompress_mbps,
        store_vs_codec: r.store_mbps / r.codec_alone_mbps, load_vs_decompress: r.load_mbps / r.codec_alone_decompress_mbps,
        bytes_per_stored_page: held / r.pages, effective_ratio: r.effective_ratio, codec_alone_ratio: r.codec_alone_ratio,
        overhead_ratio: r.overhead_ratio, metadata_bytes_per_page: r.metadata_bytes_per_page,
        same_filled_pages: r.same_filled_pages, duplicate_pages: r.duplicate_pages, unique_objects: r.unique_objects,
        full: r,
      });
    }
  }
  process.stderr.write('bench: compaction after churn\n');
  const compaction = compactionAfterChurn(corpora[0]!.file);
  process.stderr.write(`bench: metadata at ${META_PAGES} pages\n`);
  const meta = [metadataAtScale(META_PAGES, 'unique'), metadataAtScale(META_PAGES, 'mixed')];

  const head = '| corpus | codec | pages | store MB/s | codec MB/s | store/codec | load MB/s | codec decomp MB/s | load/decomp | B held/page | effective ratio | codec-alone ratio | held/codec-alone distinct | metadata B/page |';
  const lines = [head, head.replace(/[^|]+/g, '---')];
  for (const r of rows) {
    lines.push(`| ${r.corpus} | ${r.codec} | ${r.pages} | ${f(r.store_mbps, 0)} | ${f(r.codec_mbps, 0)} | ${f(r.store_vs_codec, 2)} | ${f(r.load_mbps, 0)} | ${f(r.codec_decompress_mbps, 0)} | ${f(r.load_vs_decompress, 2)} | ${f(r.bytes_per_stored_page, 0)} | ${f(r.effective_ratio, 2)} | ${f(r.codec_alone_ratio, 2)} | ${f(r.overhead_ratio, 3)} | ${f(r.metadata_bytes_per_page, 1)} |`);
  }
  const metaLines = ['| stream | pages | unique objects | metadata bytes | B/stored page | B/object | store MB/s |', '|---|---|---|---|---|---|---|',
    ...meta.map((m) => `| ${m.mix} | ${m.pages} | ${m.unique_objects} | ${m.metadata_bytes} | ${f(m.metadata_bytes_per_page as number, 1)} | ${f(m.metadata_bytes_per_object as number, 1)} | ${f(m.store_mbps as number, 0)} |`)];
  const md = [`# Page store benchmark`, '', machineMarkdown(machine), '',
    'One thread; throughput is the best of ' + RUNS + ' runs; "codec" is the same codec compressing/decompressing each page alone (the no-dedup anchor), measured in the same run.',
    '"held" = pool_total_size + metadata_bytes. "held/codec-alone distinct" = held bytes over the codec-alone bytes of the distinct, non-same-filled pages (allocator + metadata overhead; target <= 1.08).', '',
    ...corpora.filter((c) => c.note).map((c) => `- ${c.name}: ${c.note}`), '',
    ...lines, '', '## Metadata at scale', '', ...metaLines, '',
    '## Compaction after churn', '',
    `${corpora[0]!.name}, lz4: 2 of every 3 pages invalidated at random, then bounded compaction steps (16 Ki objects each) until one frees nothing.`, '',
    '| pages | live pages | compressed bytes | pool before | pool after | after/compressed | steps | longest step ms | total ms |', '|---|---|---|---|---|---|---|---|---|',
    `| ${compaction.pages} | ${compaction.live_pages} | ${compaction.compressed_bytes} | ${compaction.pool_before} | ${compaction.pool_after} | ${f(compaction.pool_after! / compaction.compressed_bytes!, 3)} | ${compaction.steps} | ${f(compaction.max_step_ms!, 1)} | ${f(compaction.total_ms!, 0)} |`, ''].join('\n');
  process.stdout.write(md + '\n');
  const dir = join(process.cwd(), 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const stamp = new Date().toISOString().slice(0, 10);
  writeFileSync(join(dir, `page-store-${stamp}.md`), md);
  writeFileSync(join(dir, `page-store-${stamp}.json`), JSON.stringify({ machine, rows, metadata_at_scale: meta, compaction }, null, 2) + '\n');
}

main().catch((e) => { process.stderr.write(`bench failed: ${(e as Error).stack}\n`); process.exitCode = 1; });
