/**
 * The real-process corpus: the bench starts a few ordinary programs (a Node.js service-like heap
 * of parsed JSON and strings, a Python program of dicts and lists, a Perl hash of log records),
 * waits until each has built its working set, and copies their resident anonymous pages
 * (/proc/PID/maps + pagemap + mem, as root) into one raw page file. This is what the kernel
 * would swap from them.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, readSync, renameSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { corporaDir, PAGE } from './corpora.js';
import { parseMaps } from '../src/analyze/proc.js';

const PROGRAMS: { name: string; cmd: string; args: string[] }[] = [
  {
    name: 'node-json-service', cmd: process.execPath, args: ['-e', `
      const users = [], cache = new Map();
      for (let i = 0; i < 400000; i++) {
        const u = { id: i, name: 'user' + (i % 5000), email: 'user' + i + '@example.com', roles: ['read', i % 7 ? 'write' : 'admin'],
          created: new Date(1700000000000 + i * 1000).toISOString(), prefs: { theme: i % 3 ? 'dark' : 'light', lang: 'en' } };
        users.push(u);
        if (i % 4 === 0) cache.set('k' + i, JSON.stringify(u));
      }
      const buffers = []; for (let i = 0; i < 64; i++) buffers.push(Buffer.alloc(1 << 20, i % 4 ? 0 : i));
      globalThis.keep = [users, cache, buffers];
      console.log('ready'); setInterval(() => {}, 1e9);`],
  },
  {
    name: 'python-records', cmd: 'python3', args: ['-c', `
import sys, time
rows = [{'id': i, 'host': 'web%02d' % (i % 40), 'path': '/api/v1/items/%d' % (i % 9000), 'status': 200 if i % 17 else 500,
         'bytes': (i * 7919) % 100000} for i in range(300000)]
index = {}
for r in rows: index.setdefault(r['host'], []).append(r['id'])
blob = bytearray(64 << 20)
print('ready', flush=True)
time.sleep(1e6)`],
  },
  {
    name: 'perl-logs', cmd: 'perl', args: ['-e', `
my %h; for my $i (0..250000) { $h{"session$i"} = join(",", "user".($i % 3000), "GET /index.html", 200 + ($i % 3), "x" x ($i % 50)); }
my @a = map { $_ * 2 } (0..2000000);
$| = 1; print "ready\\n"; sleep 1000000;`],
  },
];

function waitReady(child: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => { out += d.toString(); if (out.includes('ready')) resolve(); });
    child.on('exit', (code) => reject(new Error(`process exited (${code}) before it was ready`)));
  });
}

/** Appends the resident anonymous pages of `pid` to fd; returns pages written. */
function dumpProcess(pid: number, fd: number): number {
  const maps = parseMaps(readFileSync(`/proc/${pid}/maps`, 'utf8'));
  const pm = openSync(`/proc/${pid}/pagemap`, 'r');
  const mem = openSync(`/proc/${pid}/mem`, 'r');
  const ent = Buffer.alloc(8 * 1024);
  const page = Buffer.alloc(PAGE);
  let written = 0;
  try {
    for (const m of maps) {
      for (let va = m.start; va < m.end; va += 1024 * PAGE) {
        const n = Math.min(1024, (m.end - va) / PAGE);
        const got = readSync(pm, ent, 0, n * 8, (va / PAGE) * 8) / 8;
        for (let j = 0; j < got; j++) {
          const hi = ent.readUInt32LE(j * 8 + 4);
          if ((hi & 0x80000000) === 0 || (hi & 0x20000000) !== 0) continue; // not present, or file/shared-anon page
          try { if (readSync(mem, page, 0, PAGE, va + j * PAGE) !== PAGE) continue; } catch { continue; }
          writeSync(fd, page);
          written++;
        }
      }
    }
  } finally { closeSync(pm); closeSync(mem); }
  return written;
}

/** Builds (or reuses) the process-image corpus; returns its path and the processes it came from. */
export async function buildProcessImage(): Promise<{ path: string; pages: number; sources: { name: string; pages: number }[] }> {
  const path = join(corporaDir(), 'process-image.pages');
  const meta = path + '.json';
  if (existsSync(path) && existsSync(meta)) {
    const m = JSON.parse(readFileSync(meta, 'utf8')) as { sources: { name: string; pages: number }[] };
    return { path, pages: statSync(path).size / PAGE, sources: m.sources };
  }
  if (process.getuid?.() !== 0) throw new Error('the process-image corpus needs root (reads /proc/PID/mem of the processes it starts)');
  const children = PROGRAMS.map((p) => ({ p, c: spawn(p.cmd, p.args, { stdio: ['ignore', 'pipe', 'inherit'] }) }));
  try {
    await Promise.all(children.map(({ c }) => waitReady(c)));
    const tmp = path + '.tmp';
    const fd = openSync(tmp, 'w');
    const sources: { name: string; pages: number }[] = [];
    try {
      for (const { p, c } of children) sources.push({ name: p.name, pages: dumpProcess(c.pid!, fd) });
    } finally { closeSync(fd); }
    renameSync(tmp, path);
    writeFileSyncJson(meta, { sources });
    return { path, pages: statSync(path).size / PAGE, sources };
  } finally {
    for (const { c } of children) c.kill('SIGKILL');
  }
}

function writeFileSyncJson(path: string, v: unknown): void {
  const fd = openSync(path, 'w');
  try { writeSync(fd, JSON.stringify(v, null, 2)); } finally { closeSync(fd); }
}
