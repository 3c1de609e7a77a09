/**
 * `zdedup serve`'s remote-tier settings (--remote and friends): their flags, environment names,
 * checks, and the tier they build (a RemoteTier, or a PlacementTier of remote + disk when
 * --backing is given too). Kept apart from serve.ts so the remote tier is one narrow hook there.
 */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { ZdedupError, parseSize } from '../../errors.js';
import { DiskTier } from '../../tiers/disk/disk-tier.js';
import { PLACEMENT_POLICIES, PlacementTier, type PlacementPolicy } from '../../tiers/placement.js';
import { RemoteTier, parseRemoteUrl } from '../../tiers/remote/remote-tier.js';
import { DOMAIN_RE } from '../../tiers/remote/value.js';
import type { Tier } from '../../tiers/tier.js';

/** Raw remote settings from one source (flags, env or config file). */
export interface RemoteRaw {
  remote?: string;
  remotePasswordFile?: string;
  remoteDomain?: string;
  remoteSecretFile?: string;
  remotePlacement?: string;
  remoteLease?: string;
  remoteInflight?: string;
  remoteTimeout?: string;
}

export const REMOTE_ENV: Record<keyof RemoteRaw, string> = {
  remote: 'ZDEDUP_REMOTE',
  remotePasswordFile: 'ZDEDUP_REMOTE_PASSWORD_FILE',
  remoteDomain: 'ZDEDUP_REMOTE_DOMAIN',
  remoteSecretFile: 'ZDEDUP_REMOTE_SECRET_FILE',
  remotePlacement: 'ZDEDUP_REMOTE_PLACEMENT',
  remoteLease: 'ZDEDUP_REMOTE_LEASE',
  remoteInflight: 'ZDEDUP_REMOTE_INFLIGHT',
  remoteTimeout: 'ZDEDUP_REMOTE_TIMEOUT',
};

export interface RemoteConfig {
  url: string;
  password: string | undefined;
  domain: string;
  secret: Buffer;
  placement: PlacementPolicy;
  leaseMs: number;
  inflightBytes: number;
  timeoutMs: number;
}

export const REMOTE_HELP = `
Remote tier (docs/REMOTE.md):
  zdedup serve --max-pool 2G --remote redis://10.0.0.5:7000,10.0.0.6:7000 \\
      --remote-domain fleet-a --remote-secret-file /etc/zdedup/fleet-a.key
      cold objects go to a Redis Cluster (3 masters + replicas); hosts with the same domain and
      secret store each distinct page once; an object leaves RAM only after a master and a
      replica have it (WAIT). Make the secret with: head -c 32 /dev/urandom > fleet-a.key
  ... --remote redis://… --backing /var/lib/zdedup/cold.img --backing-size 32G
      remote first; the disk takes objects while the cluster is down or full (--remote-placement)
`;

export function addRemoteOptions(cmd: Command): Command {
  return cmd
    .option('--remote <redis://HOST:PORT[,HOST:PORT…]>', 'remote tier: Redis Cluster seed nodes (rediss:// for TLS); needs --max-pool and --remote-secret-file')
    .option('--remote-password-file <file>', 'file holding the cluster password (AUTH); never give it on the command line')
    .option('--remote-domain <name>', 'dedup domain: hosts with the same domain and secret share stored pages ([A-Za-z0-9._-], default "default")')
    .option('--remote-secret-file <file>', 'the domain secret (>= 16 bytes): keys are HMAC-SHA256 of the page under it, so other domains cannot probe content')
    .option('--remote-placement <policy>', `with --backing too: ${PLACEMENT_POLICIES.join(' | ')} (default remote-first: the disk takes what the cluster cannot, while it is down or full)`)
    .option('--remote-lease <seconds>', 'object lease in the cluster, renewed every third by each host holding the object; unrenewed objects expire (default 600; the domain keeps the first host\'s value)')
    .option('--remote-inflight <size>', 'bytes of objects written to the cluster but not yet acknowledged by a master and a replica (default 16M)')
    .option('--remote-timeout <seconds>', 'bound on one remote load with its retries, and on WAIT (default 2)');
}

function readSecretFile(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', `cannot read ${what} ${path}: ${(e as Error).message}`);
  }
}

/** Checks the remote settings; null without --remote. */
export function resolveRemoteConfig(pick: <K extends keyof RemoteRaw>(k: K) => RemoteRaw[K], maxPool: number): RemoteConfig | null {
  const url = pick('remote');
  if (url === undefined || url === '') {
    for (const k of Object.keys(REMOTE_ENV) as (keyof RemoteRaw)[]) {
      if (k !== 'remote' && pick(k) !== undefined) throw new ZdedupError('ERR_INVALID_ARGUMENT', `--${k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())} needs --remote`);
    }
    return null;
  }
  parseRemoteUrl(url); // throws with the reason
  if (maxPool === 0) throw new ZdedupError('ERR_INVALID_ARGUMENT', '--remote needs --max-pool: the remote tier takes what does not fit in a bounded RAM pool');
  const secretFile = pick('remoteSecretFile');
  if (secretFile === undefined) throw new ZdedupError('ERR_INVALID_ARGUMENT', '--remote needs --remote-secret-file FILE (the dedup domain secret, >= 16 bytes)');
  const secret = readSecretFile(secretFile, '--remote-secret-file');
  const trimmed = /^[\x20-\x7e]*\r?\n?$/.test(secret.toString('latin1')) ? Buffer.from(secret.toString('latin1').replace(/\r?\n$/, ''), 'latin1') : secret;
  if (trimmed.length < 16) throw new ZdedupError('ERR_INVALID_ARGUMENT', `--remote-secret-file ${secretFile} holds ${trimmed.length} bytes; a domain secret needs at least 16`);
  const pwFile = pick('remotePasswordFile');
  const password = pwFile !== undefined ? readSecretFile(pwFile, '--remote-password-file').toString('utf8').replace(/\r?\n$/, '') : undefined;
  const domain = pick('remoteDomain') ?? 'default';
  if (!DOMAIN_RE.test(domain)) throw new ZdedupError('ERR_INVALID_ARGUMENT', `--remote-domain must match [A-Za-z0-9._-]{1,64}, got "${domain}"`);
  const placement = (pick('remotePlacement') ?? 'remote-first') as PlacementPolicy;
  if (!PLACEMENT_POLICIES.includes(placement)) throw new ZdedupError('ERR_INVALID_ARGUMENT', `--remote-placement must be ${PLACEMENT_POLICIES.join(' or ')}, got "${placement}"`);
  const seconds = (v: string | undefined, what: string, dflt: number, min: number): number => {
    if (v === undefined) return dflt;
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n) || n < min) throw new ZdedupError('ERR_INVALID_ARGUMENT', `${what} must be a number of seconds ≥ ${min}, got "${v}"`);
    return Math.round(n * 1000);
  };
  const inflightArg = pick('remoteInflight');
  return {
    url, password, domain, secret: trimmed, placement,
    leaseMs: seconds(pick('remoteLease'), '--remote-lease', 600_000, 1),
    inflightBytes: inflightArg !== undefined ? parseSize(inflightArg) : 16 << 20,
    timeoutMs: seconds(pick('remoteTimeout'), '--remote-timeout', 2000, 0.1),
  };
}

/** The tier for the store: the remote one, or remote + disk under the placement policy. */
export function buildRemoteTier(r: RemoteConfig, opts: {
  pageSize: number; codec: string;
  backing?: { path: string; size?: number; segmentSize?: number; overwrite?: boolean };
  events: (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;
}): Tier {
  const remote = new RemoteTier({
    url: r.url, password: r.password, domain: r.domain, secret: r.secret, pageSize: opts.pageSize, codec: opts.codec,
    leaseMs: r.leaseMs, inflightBytes: r.inflightBytes, timeoutMs: r.timeoutMs, events: opts.events,
  });
  if (opts.backing === undefined) return remote;
  const disk = new DiskTier({ ...opts.backing, pageSize: opts.pageSize, events: opts.events });
  return new PlacementTier(remote, disk, r.placement);
}
