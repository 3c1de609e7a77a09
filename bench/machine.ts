/** Describes the machine a benchmark ran on, for the committed results. */
import { cpus, totalmem, release, hostname } from 'node:os';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

export interface Machine {
  cpu: string;
  cores: number;
  ram_gib: number;
  kernel: string;
  node: string;
  os: string;
  libs: Record<string, string>;
  date: string;
  host: string;
}

function pkgVersion(pkg: string): string {
  try {
    return execFileSync('dpkg-query', ['-W', '-f=${Version}', pkg], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch { return 'unknown'; }
}

export function describeMachine(extraPkgs: string[] = []): Machine {
  let os = 'unknown';
  try { os = /PRETTY_NAME="([^"]+)"/.exec(readFileSync('/etc/os-release', 'utf8'))?.[1] ?? os; } catch { /* not Linux */ }
  const libs: Record<string, string> = {};
  for (const p of ['liblz4-1', 'libzstd1', 'libxxhash0', ...extraPkgs]) libs[p] = pkgVersion(p);
  return {
    cpu: cpus()[0]?.model ?? 'unknown',
    cores: cpus().length,
    ram_gib: Math.round(totalmem() / 2 ** 30),
    kernel: release(),
    node: process.version,
    os,
    libs,
    date: new Date().toISOString(),
    host: hostname(),
  };
}

export function machineMarkdown(m: Machine): string {
  return `Machine: ${m.cpu}, ${m.cores} cores, ${m.ram_gib} GiB RAM; ${m.os}, kernel ${m.kernel}; Node ${m.node}; ` +
    Object.entries(m.libs).map(([k, v]) => `${k} ${v}`).join(', ') + `; ${m.date}.`;
}
