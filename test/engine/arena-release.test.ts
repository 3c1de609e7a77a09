/**
 * Empty arenas go back to the OS: a child process (with --expose-gc) fills a store, invalidates
 * every other page, compacts, collects garbage, and reports RSS. The drop must be at least a
 * third of what the pool held.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const storeUrl = new URL('../../src/core/page-store.js', import.meta.url).href;

const child = `
import { PageStore } from ${JSON.stringify(storeUrl)};
import { readFileSync } from 'node:fs';
const rss = () => Number(/VmRSS:\\s+(\\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;
const s = new PageStore({ codec: 'none' });
const a = s.createArea('a', 65536);
const p = Buffer.alloc(4096);
for (let i = 0; i < 65536; i++) { p.writeUInt32LE(i, 0); p.writeUInt32LE(i * 7, 100); s.store(a, i, p); }
const pool = s.stats().pool_total_size;
global.gc(); const full = rss();
for (let i = 0; i < 65536; i += 2) s.invalidatePage(a, i);
// compaction works in bounded steps: repeat while a step does something
const r = { freed_arenas: 0 };
for (;;) { const x = s.compact(); r.freed_arenas += x.freed_arenas; if (x.moved_objects + x.moved_zspages + x.freed_arenas === 0) break; }
await new Promise((res) => setTimeout(res, 50)); global.gc(); global.gc();
const after = rss();
console.log(JSON.stringify({ pool, poolAfter: s.stats().pool_total_size, full, after, freed_arenas: r.freed_arenas }));
`;

test('compaction frees arenas and the process RSS drops', () => {
  const out = execFileSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', child], { encoding: 'utf8', cwd: fileURLToPath(new URL('.', import.meta.url)) });
  const r = JSON.parse(out) as { pool: number; poolAfter: number; full: number; after: number; freed_arenas: number };
  assert.ok(r.freed_arenas > 0, 'compaction freed arenas');
  assert.ok(r.poolAfter <= r.pool * 0.55, `pool_total_size halved: ${r.pool} -> ${r.poolAfter}`);
  assert.ok(r.full - r.after >= r.pool / 3, `RSS dropped by at least a third of the pool: ${r.full} -> ${r.after} (pool ${r.pool})`);
});
