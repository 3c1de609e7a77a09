/**
 * `npm run bench:bindings`: races the codec and hash bindings this project could use, on the
 * bench corpora, one 4 KiB page at a time (how the store calls them). This is how the bindings
 * in src/engine/codec/native.ts were chosen: FFI (koffi) to the system's liblz4 / libzstd /
 * libxxhash against npm ports (lz4-napi = Rust lz4_flex, @bokuweb/zstd-wasm, @node-rs/xxhash,
 * xxhash-wasm). Reports MB/s and compressed bytes; best of 3 passes.
 */
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { nativeLz4, nativeXxhash, nativeZstd } from '../src/engine/codec/native.js';
import { buildCorpus, PAGE } from './corpora.js';
import { buildProcessImage } from './process-image.js';
import { describeMachine, machineMarkdown } from './machine.js';

const require = createRequire(import.meta.url);

type Fn = (page: Buffer) => number; // returns output size (0 for hashes)

async function main(): Promise<void> {
  const lz4n = require('lz4-napi') as { compressSync(b: Buffer): Buffer; uncompressSync(b: Buffer): Buffer };
  const xxn = require('@node-rs/xxhash') as { xxh3: { xxh64(b: Buffer): bigint } };
  const xxw = await (require('xxhash-wasm') as () => Promise<{ h64Raw(b: Uint8Array): bigint }>)();
  const zw = require('@bokuweb/zstd-wasm') as { init(): Promise<void>; compress(b: Uint8Array, l: number): Uint8Array; decompress(b: Uint8Array): Uint8Array };
  await zw.init();
  const l = nativeLz4(), z = nativeZstd(), x = nativeXxhash();
  const dst = Buffer.alloc(2 * PAGE), out = Buffer.alloc(PAGE);

  const corpora: [string, Buffer][] = [];
  try { corpora.push(['process-image', readFileSync((await buildProcessImage()).path).subarray(0, 64 << 20)]); } catch { /* not root */ }
  for (const n of ['text', 'duplicate-heavy', 'random']) corpora.push([n, readFileSync(buildCorpus(n, 65536)).subarray(0, 64 << 20)]);

  const compressors: [string, Fn][] = [
    ['lz4 liblz4 (koffi FFI)', (p) => l.compress(p, dst, PAGE, dst.length)],
    ['lz4 lz4-napi (lz4_flex)', (p) => lz4n.compressSync(p).length],
    ['zstd:3 libzstd (koffi FFI)', (p) => z.compress(dst, dst.length, p, PAGE, 3)],
    ['zstd:3 @bokuweb/zstd-wasm', (p) => zw.compress(p, 3).length],
    ['xxh3-64 libxxhash (koffi FFI)', (p) => { x.xxh3(p, PAGE); return 0; }],
    ['xxh3-64 @node-rs/xxhash', (p) => { xxn.xxh3.xxh64(p); return 0; }],
    ['xxh64 xxhash-wasm', (p) => { xxw.h64Raw(p); return 0; }],
  ];
  const rows: { corpus: string; binding: string; mbps: number; bytes: number; ratio: number }[] = [];
  for (const [cname, data] of corpora) {
    const pages = data.length / PAGE;
    for (const [name, fn] of compressors) {
      let bestNs = Infinity, bytes = 0;
      for (let r = 0; r < 3; r++) {
        bytes = 0;
        const t = process.hrtime.bigint();
        for (let i = 0; i < pages; i++) bytes += fn(data.subarray(i * PAGE, (i + 1) * PAGE));
        bestNs = Math.min(bestNs, Number(process.hrtime.bigint() - t));
      }
      rows.push({ corpus: cname, binding: name, mbps: data.length / bestNs * 1e3, bytes, ratio: bytes ? data.length / bytes : 0 });
    }
    // decompression
    const lz4c: Buffer[] = [], lz4nc: Buffer[] = [], zc: Buffer[] = [], zwc: Uint8Array[] = [];
    for (let i = 0; i < pages; i++) {
      const p = data.subarray(i * PAGE, (i + 1) * PAGE);
      lz4c.push(Buffer.from(dst.subarray(0, l.compress(p, dst, PAGE, dst.length))));
      lz4nc.push(lz4n.compressSync(p));
      zc.push(Buffer.from(dst.subarray(0, z.compress(dst, dst.length, p, PAGE, 3))));
      zwc.push(zw.compress(p, 3));
    }
    const decoders: [string, (i: number) => void][] = [
      ['lz4 decompress liblz4 (koffi FFI)', (i) => { l.decompress(lz4c[i]!, out, lz4c[i]!.length, PAGE); }],
      ['lz4 decompress lz4-napi', (i) => { lz4n.uncompressSync(lz4nc[i]!); }],
      ['zstd decompress libzstd (koffi FFI)', (i) => { z.decompress(out, PAGE, zc[i]!, zc[i]!.length); }],
      ['zstd decompress @bokuweb/zstd-wasm', (i) => { zw.decompress(zwc[i]!); }],
    ];
    for (const [name, fn] of decoders) {
      let bestNs = Infinity;
      for (let r = 0; r < 3; r++) {
        const t = process.hrtime.bigint();
        for (let i = 0; i < pages; i++) fn(i);
        bestNs = Math.min(bestNs, Number(process.hrtime.bigint() - t));
      }
      rows.push({ corpus: cname, binding: name, mbps: data.length / bestNs * 1e3, bytes: 0, ratio: 0 });
    }
  }
  const machine = describeMachine();
  const md = ['# Codec and hash bindings, 4 KiB pages, one call per page', '', machineMarkdown(machine), '',
    '| corpus | binding | MB/s | compressed bytes | ratio |', '|---|---|---|---|---|',
    ...rows.map((r) => `| ${r.corpus} | ${r.binding} | ${r.mbps.toFixed(0)} | ${r.bytes || ''} | ${r.ratio ? r.ratio.toFixed(3) : ''} |`), ''].join('\n');
  process.stdout.write(md + '\n');
  const dir = join(process.cwd(), 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'codec-bindings.md'), md);
  writeFileSync(join(dir, 'codec-bindings.json'), JSON.stringify({ machine, rows }, null, 2) + '\n');
}

main().catch((e) => { process.stderr.write(`${(e as Error).stack}\n`); process.exitCode = 1; });
