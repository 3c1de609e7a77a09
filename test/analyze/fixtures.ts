/**
 * Test fixtures for analyze: a tiny C program with a known anonymous memory layout, page-file
 * builders, and a runner for the CLI (`node bin/zdedup.js analyze ... --json`).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Report } from '../../src/analyze/report.js';

/** Repository root (this file runs from dist/test/analyze/). */
export const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const CLI = join(ROOT, 'bin', 'zdedup.js');

export function runAnalyze(args: string[]): { code: number; report: Report | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, 'analyze', ...args], { encoding: 'utf8', maxBuffer: 256 << 20 });
  let report: Report | null = null;
  if (args.includes('--json') && r.stdout.trim().startsWith('{')) report = JSON.parse(r.stdout) as Report;
  return { code: r.status ?? -1, report, stdout: r.stdout, stderr: r.stderr };
}

export const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;

export function haveGcc(): boolean {
  return spawnSync('gcc', ['--version'], { encoding: 'utf8' }).status === 0;
}

/**
 * The fixture process. Layout of its region (one private anonymous mapping between two
 * PROT_NONE guard pages, THP off so every page is a 4 KiB page):
 *   ZERO      pages written with zeros         -> zero pages
 *   SAME      pages of the word 0x0123456789abcdef -> same-filled, not zero
 *   DISTINCT x COPIES pages: COPIES rounds of DISTINCT different pages (content from SEED,
 *             half pseudo-random, half letters) -> DISTINCT unique, DISTINCT*(COPIES-1) duplicates
 *   RANDOM    pseudo-random pages seeded with SEED and the pid -> unique, differ between processes
 *   READONLY  pages only read -> mapped to the kernel's shared zero page
 * With FORK=1 it forks after filling; the child keeps the region shared copy-on-write.
 * It prints "READY <pid> <region address hex> <pages> <child pid or 0>" and waits for stdin to close.
 */
const SOURCE = String.raw`
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/wait.h>
static uint64_t s;
static uint64_t next(void) { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s; }
int main(int argc, char **argv) {
  if (argc != 9) return 2;
  long zero = atol(argv[1]), same = atol(argv[2]), distinct = atol(argv[3]), copies = atol(argv[4]);
  long rnd = atol(argv[5]), ro = atol(argv[6]);
  uint64_t seed = strtoull(argv[7], 0, 0);
  int dofork = atoi(argv[8]);
  long P = sysconf(_SC_PAGESIZE);
  long pages = zero + same + distinct * copies + rnd + ro;
  char *base = mmap(NULL, (pages + 2) * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) return 3;
  mprotect(base, P, PROT_NONE);
  mprotect(base + (pages + 1) * P, P, PROT_NONE);
  madvise(base + P, pages * P, MADV_NOHUGEPAGE);
  char *p = base + P;
  memset(p, 0, zero * P); p += zero * P;
  for (long i = 0; i < same; i++, p += P) for (long j = 0; j < P / 8; j++) ((uint64_t *)p)[j] = 0x0123456789abcdefULL;
  for (long c = 0; c < copies; c++) for (long d = 0; d < distinct; d++, p += P) {
    s = seed * 1000003ULL + (uint64_t)d + 1;
    for (long j = 0; j < P / 16; j++) ((uint64_t *)p)[j] = next();
    for (long j = P / 2; j < P; j++) p[j] = 'a' + (j + d) % 26;
  }
  for (long i = 0; i < rnd; i++, p += P) {
    s = (seed ^ ((uint64_t)getpid() << 32) ^ (0x9e3779b97f4a7c15ULL * (uint64_t)(i + 1))) | 1;
    for (long j = 0; j < P / 8; j++) ((uint64_t *)p)[j] = next();
  }
  volatile char sink = 0;
  for (long i = 0; i < ro; i++, p += P) sink += p[0];
  pid_t child = 0;
  if (dofork) { child = fork(); if (child == 0) { char b; while (read(0, &b, 1) > 0) {} _exit(0); } }
  printf("READY %d %lx %ld %d\n", getpid(), (unsigned long)(base + P), pages, (int)child);
  fflush(stdout);
  char b; while (read(0, &b, 1) > 0) {}
  if (child > 0) waitpid(child, 0, 0);
  return sink == 42;
}
`;

let compiled: string | null = null;

/** Compiles the fixture once per test process; returns the binary path. */
export function fixtureBinary(): string {
  if (compiled && existsSync(compiled)) return compiled;
  const dir = mkdtempSync(join(tmpdir(), 'zdedup-analyze-'));
  writeFileSync(join(dir, 'fill.c'), SOURCE);
  const r = spawnSync('gcc', ['-O1', '-o', join(dir, 'fill'), join(dir, 'fill.c')], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`gcc failed: ${r.stderr}`);
  compiled = join(dir, 'fill');
  return compiled;
}

export interface Layout { zero: number; same: number; distinct: number; copies: number; random: number; readonly: number; seed: number; fork?: boolean }

export interface Fixture { proc: ChildProcess; pid: number; addr: string; pages: number; child: number; stop(): Promise<void> }

export function startFixture(l: Layout): Promise<Fixture> {
  const proc = spawn(fixtureBinary(), [l.zero, l.same, l.distinct, l.copies, l.random, l.readonly, l.seed, l.fork ? 1 : 0].map(String), { stdio: ['pipe', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let out = '';
    proc.on('error', reject);
    proc.on('exit', (code) => reject(new Error(`fixture exited early with ${code}`)));
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /READY (\d+) ([0-9a-f]+) (\d+) (\d+)\n/.exec(out);
      if (!m) return;
      proc.removeAllListeners('exit');
      resolve({
        proc, pid: Number(m[1]), addr: '0x' + m[2], pages: Number(m[3]), child: Number(m[4]),
        stop: () => new Promise((res) => { proc.once('exit', () => res()); proc.stdin!.end(); }),
      });
    });
  });
}
