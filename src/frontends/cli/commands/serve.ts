/**
 * `zdedup serve`: the daemon. Builds one PageStore, one NBD export per --export (an area each),
 * listens where asked, serves /stats and /metrics over HTTP, logs JSON lines to stderr, and stops
 * gracefully on SIGTERM/SIGINT (exit 0).
 *
 * Settings come from, highest first: command-line flags > ZDEDUP_* environment variables >
 * the --config JSON file > defaults. resolveServeConfig() does that merge in one place.
 *
 * Where NBD is served:
 *   - socket activation (LISTEN_PID = our pid, LISTEN_FDS ≥ 1): the inherited fds from 3 on;
 *   - else --stdio: one connection on stdin/stdout, exit when it closes;
 *   - else the unix socket (default /run/zdedup/zdedup.sock) and/or TCP with --listen.
 *
 * TLS per listener (nbd/tls.ts): --tls applies to every listener when given; otherwise a TCP
 * listener on a non-loopback address requires TLS, and the others offer it when credentials are
 * loaded. Anything but `require` on a non-loopback address needs --insecure.
 *
 * Signals: SIGTERM/SIGINT stop gracefully (the socket is removed); SIGHUP is logged and ignored
 * (logs go to stderr, there is nothing to reopen); SIGUSR1 is ignored so it cannot open Node's
 * inspector (bin/zdedup.js installs that guard before anything else runs).
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import type { Command } from 'commander';
import { DEFAULT_COLD_AFTER_SECONDS, DEFAULT_COLD_GROUP_PAGES, DEFAULT_COLD_CODEC, parseColdOptions } from '../../../core/cold.js';
import { PageStore } from '../../../core/page-store.js';
import { ZdedupError, parseSize } from '../../../core/errors.js';
import { StatsHttpServer, isLoopbackHost } from '../../http/server.js';
import { Logger, isLogLevel, type LogLevel } from '../../log.js';
import type { ExportSpec } from '../../nbd/export.js';
import { DEFAULT_LIMITS, NbdServer, type NbdLimits } from '../../nbd/server.js';
import { isTlsMode, loadPsk, loadX509, type TlsCredentials, type TlsMode } from '../../nbd/tls.js';
import { parseSocketMode, resolveGroup } from '../../nbd/unix-socket.js';
import { defaultSocketPath } from '../../paths.js';
import { version, type Ctx } from '../main.js';
import { REMOTE_ENV, REMOTE_HELP, addRemoteOptions, buildRemoteTier, resolveRemoteConfig, type RemoteConfig, type RemoteRaw } from '../remote-config.js';

/** /run/zdedup/zdedup.sock as root; $XDG_RUNTIME_DIR/zdedup/zdedup.sock (or <tmp>/zdedup-<uid>/) otherwise. */
export const DEFAULT_SOCKET = defaultSocketPath();
export const DEFAULT_SIZE = '1G';
export const DEFAULT_HTTP = '127.0.0.1:10810';
export const DEFAULT_NBD_PORT = 10809;

/** Everything `serve` needs, after merging flags, environment, config file and defaults. */
export interface ServeConfig {
  socket: string | null;
  listen: { host: string; port: number } | null;
  http: { host: string; port: number } | null;
  stdio: boolean;
  exports: ExportSpec[];
  pageSize: number;
  codec: string;
  sharedDedup: boolean;
  maxPool: number;
  acceptThreshold: number;
  backing: string | null;
  backingSize: number | undefined;
  segmentSize: number | undefined;
  writethrough: boolean;
  backingOverwrite: boolean;
  /** The remote tier (--remote …), or null. */
  remote: RemoteConfig | null;
  /** The cold tier (--cold-codec; null: off) with its idle time and group size. */
  cold: { codec: string; afterSeconds: number; groupPages: number } | null;
  /** Worker threads compressing new pages beside the request thread (0: on the request thread). */
  compressThreads: number;
  /** Durable mode: acknowledged FLUSH / FUA writes survive a crash and a restart on the same backing. */
  persist: boolean;
  /** Durable mode: journal bytes between checkpoints (undefined: the store's default, 64 MiB). */
  checkpointInterval: number | undefined;
  /** Allow --http on a non-loopback address (read-only stats, no authentication), and NBD on one without required TLS. */
  insecure: boolean;
  logLevel: LogLevel;
  /** Unix socket permission bits (default 0600) and group (gid), from --socket-mode / --socket-group. */
  socketMode: number;
  socketGroup: number | undefined;
  limits: NbdLimits;
  /** --tls as given (null: per listener, see the file comment). */
  tls: TlsMode | null;
  tlsCertificates: string | null;
  tlsPsk: string | null;
  tlsVerifyPeer: boolean;
}

/** Raw settings from one source (flags, env or file), all optional. */
interface RawSettings extends RemoteRaw {
  socket?: string;
  size?: string;
  codec?: string;
  http?: string;
  export?: string[];
  pageSize?: string;
  listen?: string;
  readOnly?: boolean;
  sharedDedup?: boolean;
  maxPool?: string;
  acceptThreshold?: string;
  backing?: string;
  backingSize?: string;
  segmentSize?: string;
  writethrough?: boolean;
  backingOverwrite?: boolean;
  coldCodec?: string;
  coldAfter?: string;
  coldGroup?: string;
  compressThreads?: string;
  persist?: boolean;
  checkpointInterval?: string;
  insecure?: boolean;
  logLevel?: string;
  stdio?: boolean;
  socketMode?: string;
  socketGroup?: string;
  maxConnections?: string;
  handshakeTimeout?: string;
  idleTimeout?: string;
  maxBuffered?: string;
  tls?: string;
  tlsCertificates?: string;
  tlsPsk?: string;
  tlsVerifyPeer?: boolean;
}

const ENV: Record<keyof RawSettings, string> = {
  ...REMOTE_ENV,
  socket: 'ZDEDUP_SOCKET',
  size: 'ZDEDUP_SIZE',
  codec: 'ZDEDUP_CODEC',
  http: 'ZDEDUP_HTTP',
  export: 'ZDEDUP_EXPORTS',
  pageSize: 'ZDEDUP_PAGE_SIZE',
  listen: 'ZDEDUP_LISTEN',
  readOnly: 'ZDEDUP_READ_ONLY',
  sharedDedup: 'ZDEDUP_SHARED_DEDUP',
  maxPool: 'ZDEDUP_MAX_POOL',
  acceptThreshold: 'ZDEDUP_ACCEPT_THRESHOLD',
  backing: 'ZDEDUP_BACKING',
  backingSize: 'ZDEDUP_BACKING_SIZE',
  segmentSize: 'ZDEDUP_SEGMENT_SIZE',
  writethrough: 'ZDEDUP_WRITETHROUGH',
  backingOverwrite: 'ZDEDUP_BACKING_OVERWRITE',
  coldCodec: 'ZDEDUP_COLD_CODEC',
  coldAfter: 'ZDEDUP_COLD_AFTER',
  coldGroup: 'ZDEDUP_COLD_GROUP',
  compressThreads: 'ZDEDUP_COMPRESS_THREADS',
  persist: 'ZDEDUP_PERSIST',
  checkpointInterval: 'ZDEDUP_CHECKPOINT_INTERVAL',
  insecure: 'ZDEDUP_INSECURE',
  logLevel: 'ZDEDUP_LOG_LEVEL',
  stdio: 'ZDEDUP_STDIO',
  socketMode: 'ZDEDUP_SOCKET_MODE',
  socketGroup: 'ZDEDUP_SOCKET_GROUP',
  maxConnections: 'ZDEDUP_MAX_CONNECTIONS',
  handshakeTimeout: 'ZDEDUP_HANDSHAKE_TIMEOUT',
  idleTimeout: 'ZDEDUP_IDLE_TIMEOUT',
  maxBuffered: 'ZDEDUP_MAX_BUFFERED',
  tls: 'ZDEDUP_TLS',
  tlsCertificates: 'ZDEDUP_TLS_CERTIFICATES',
  tlsPsk: 'ZDEDUP_TLS_PSK',
  tlsVerifyPeer: 'ZDEDUP_TLS_VERIFY_PEER',
};
const BOOLEAN_KEYS = new Set<keyof RawSettings>(['readOnly', 'sharedDedup', 'stdio', 'writethrough', 'persist', 'insecure', 'tlsVerifyPeer']);
/** --max-pool when --persist is given without it: RAM is then only a cache of the log's hottest objects. */
export const DEFAULT_PERSIST_POOL = '256M';

const HELP_AFTER = `
Sizes take K/M/G/T suffixes (binary). Every setting may also come from the environment,
ZDEDUP_<FLAG> (ZDEDUP_SOCKET, ZDEDUP_SIZE, ZDEDUP_CODEC, ZDEDUP_HTTP, ZDEDUP_PAGE_SIZE,
ZDEDUP_MAX_POOL, ZDEDUP_READ_ONLY=1, ...; ZDEDUP_EXPORTS=a:1G,b:2G), or from a JSON file given
with --config or ZDEDUP_CONFIG, with the same keys:
  {"socket": "/run/zdedup/zdedup.sock", "codec": "zstd:3", "export": ["swap:8G", "vm:20G"]}
Precedence: flags > environment > config file > defaults.

Examples:
  zdedup serve
      one 1 GiB export named "" on ${DEFAULT_SOCKET}, stats on http://${DEFAULT_HTTP}/stats
  zdedup serve --socket /tmp/z.sock --size 4G --codec zstd:3 --http 127.0.0.1:9000
  zdedup serve --max-pool 2G --backing /var/lib/zdedup/cold.img --backing-size 32G
      a RAM pool of at most 2 GiB; its coldest objects move, still compressed, into 4 MiB
      segments of the backing file (a file or a block device); writes fail only when both are full
  zdedup serve --backing /var/lib/zdedup/vm.img --backing-size 64G --size 20G --persist
      durable mode: every write acknowledged after a FLUSH (or sent with FUA) survives kill -9
      and a restart on the same backing; the export's size and the page size are kept in it
      (restart without --backing-size; --size may grow, never shrink); zdedup fsck checks it
  zdedup serve --max-pool 25% --backing /dev/vdb --writethrough
      every new object also goes to the disk at once, so evicting it later costs no write
  zdedup serve --codec lz4 --cold-codec zstd:9 --cold-after 60 --cold-group 8
      stores at lz4 speed; pages idle for 60 s are recompressed 8 at a time with zstd-9 into
      RAM segments (~30% less RAM on process images; a load of one decompresses its group)
  zdedup serve --export swap:8G --export vm:20G --listen 127.0.0.1:10809
      two exports over a unix socket and TCP; nbdinfo --list 'nbd://127.0.0.1' lists them
  zdedup serve --export vm1:cache=/img/vm1.raw --export vm2:cache=/img/vm2.raw --max-pool 4G
      two VM disks through one compressed, deduplicated RAM cache; identical images are read once
  zdedup serve --listen 0.0.0.0:10809 --tls-psk /etc/zdedup/keys.psk
      TCP on every address: TLS is then required (nbdinfo 'nbds://alice@host/?tls-psk-file=keys.psk');
      keys.psk holds "alice:HEXKEY" lines (psktool -u alice -p keys.psk)
  zdedup serve --socket /run/zdedup/zdedup.sock --socket-mode 0660 --socket-group disk
      let members of "disk" use the socket (it is 0600, owner only, by default)
  nbdinfo -- [ zdedup serve --stdio --size 64M ]
      libnbd tools start the server themselves (socket activation or stdin/stdout)

Then:
  nbdinfo --map 'nbd+unix:///?socket=/tmp/z.sock'          what is stored
  qemu-img convert -n -O raw disk.img 'nbd+unix:///?socket=/tmp/z.sock'
  zdedup stats --http 127.0.0.1:9000                       ratios and counters
Stop with SIGTERM or Ctrl-C: requests already received are answered, then it exits 0.
`;

export function registerServe(program: Command, ctx: Ctx): void {
  const serve = program
    .command('serve')
    .summary('serve the page store over NBD (swap device, VM disk)')
    .description(
      'Serve a compressed, deduplicating RAM store over NBD: a swap device for the kernel, a disk for ' +
      'qemu or any NBD client. Each export is a separate area of one page store. Fixed newstyle NBD ' +
      'with structured replies, base:allocation and multi-conn (docs/NBD.md).',
    )
    .option('--socket <path>', `unix socket to listen on (default ${DEFAULT_SOCKET}: /run/zdedup as root, else $XDG_RUNTIME_DIR/zdedup or /tmp/zdedup-UID; the directory is created)`)
    .option('--size <size>', `size of the default export "" (default ${DEFAULT_SIZE})`)
    .option('--export <name:size[:ro][:max-pool=SIZE]>', 'an export (repeatable); replaces the default export. max-pool: the most RAM pool bytes its data may hold (beyond it, its own coldest objects go to --backing, or its writes get ENOSPC); other exports are never pushed out for it. ' +
      'NAME:cache=PATH[:ro] serves the raw image file PATH through a deduplicated RAM cache: reads come from the cache or the file (then cached), writes go to the file first (writethrough, O_DSYNC); identical images share one cached copy; the cache is dropped first under --max-pool pressure', collect)
    .option('--codec <codec>', 'lz4 | zstd[:LEVEL] | none (default lz4)')
    .option('--page-size <size>', 'store page size, a power of two 4K..64K (default 4K)')
    .option('--listen <[host:]port>', `also (or only) listen on TCP; host defaults to 127.0.0.1, port to ${DEFAULT_NBD_PORT}`)
    .option('--http <host:port|off>', `HTTP /stats and /metrics (default ${DEFAULT_HTTP}; "off" disables)`)
    .option('--read-only', 'serve every export read-only')
    .option('--shared-dedup', 'deduplicate across exports (default: each export is its own dedup domain)')
    .option('--max-pool <size|N%>', 'cap the RAM pool (bytes, or a percentage of RAM); without --backing, writes beyond it fail with ENOSPC (default unbounded)')
    .option('--accept-threshold <percent>', 'after the pool hits its limit, new objects bypass RAM until writeback brings it to this percent of the limit (default 90)')
    .option('--backing <path>', 'disk tier: a file (created with --backing-size) or block device that takes cold objects, still compressed, in large segments; its old contents are not kept unless --persist')
    .option('--backing-size <size>', 'size to create or resize the --backing file to (a new file needs it)')
    .option('--segment-size <size>', 'disk tier segment size, a multiple of 4K (default 4M)')
    .option('--backing-overwrite', 'use a --backing that holds other data (by default only zeroes or an earlier zdedup backing are taken)')
    .option('--writethrough', 'also append every new object to the disk tier at store time (eviction then costs no write)')
    .option('--persist', `durable mode: writes acknowledged after a FLUSH (or with FUA) survive a crash and restart on the same --backing, which keeps the exports and their sizes; without it a restart starts empty (--max-pool defaults to ${DEFAULT_PERSIST_POOL} here: RAM caches the log)`)
    .option('--checkpoint-interval <size>', 'with --persist: journal bytes between checkpoints of the slot maps (default 64M; smaller = shorter replay at start, more writes)');
  addRemoteOptions(serve)
    .option('--cold-codec <zstd:LEVEL|off>', `cold tier: objects idle for --cold-after are recompressed with zstd in groups of --cold-group pages, in RAM (default off; ${DEFAULT_COLD_CODEC} when on is the measured choice, see README)`)
    .option('--cold-after <seconds>', `idle time before an object goes cold (default ${DEFAULT_COLD_AFTER_SECONDS}; 0 = at the next pass)`)
    .option('--cold-group <n>', `pages compressed together in one cold frame, 1..64 (default ${DEFAULT_COLD_GROUP_PAGES}); a load of a cold page decompresses its group`)
    .option('--compress-threads <n>', `worker threads that compress new pages while the request thread goes on, 0..16 (default ${defaultCompressThreads()} here: the CPUs minus one, at most ${MAX_DEFAULT_COMPRESS_THREADS}; 0 = compress on the request thread; not used with --persist)`)
    .option('--insecure', 'allow --http on a non-loopback address (stats and dashboard are read-only and unauthenticated), and NBD --listen on one without --tls=require')
    .option('--socket-mode <mode>', 'permission bits of the unix socket, octal (default 0600: owner only, whatever the umask)')
    .option('--socket-group <group>', 'group of the unix socket (name or gid); use with --socket-mode 0660')
    .option('--max-connections <n>', `NBD connections at once (default ${DEFAULT_LIMITS.maxConnections}); at the cap the oldest one still negotiating is closed, else the new one is refused`)
    .option('--handshake-timeout <seconds>', `close a connection that has not finished its handshake after this long (default ${DEFAULT_LIMITS.handshakeTimeoutMs / 1000}; 0 = never)`)
    .option('--idle-timeout <seconds>', `close a connection with a request partly sent or replies unread and no progress for this long (default ${DEFAULT_LIMITS.idleTimeoutMs / 1000}; 0 = never); idle clients between requests are never closed`)
    .option('--max-buffered <size>', `bytes of request payloads and READ replies held at once across all connections (default ${DEFAULT_LIMITS.maxBufferedBytes / 2 ** 20}M, at least 33M); requests beyond it wait`)
    .option('--tls <off|on|require>', 'NBD STARTTLS: off, on (offered), require (default: require on a non-loopback --listen, else on with credentials, off without)')
    .option('--tls-certificates <dir>', 'x509 credentials: DIR/server-cert.pem, DIR/server-key.pem, DIR/ca-cert.pem (nbdkit/qemu layout)')
    .option('--tls-psk <file>', 'pre-shared keys, one "username:hexkey" per line (psktool format)')
    .option('--tls-verify-peer', 'with --tls-certificates: clients must present a certificate signed by ca-cert.pem')
    .option('--stdio', 'serve one NBD connection on stdin/stdout, then exit (logs stay on stderr)')
    .option('--config <file>', 'JSON file with the same settings (env ZDEDUP_CONFIG)')
    .option('--log-level <level>', 'error | warn | info | debug (default info)')
    .addHelpText('after', HELP_AFTER + REMOTE_HELP)
    .action(async (opts: RawSettings & { config?: string }) => {
      const cfg = resolveServeConfig(opts, process.env);
      ctx.exitCode = await runServe(cfg);
    });
}

function collect(v: string, prev: string[] | undefined): string[] {
  return [...(prev ?? []), v];
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/** Merges flags > env > config file > defaults into a checked ServeConfig. */
export function resolveServeConfig(flags: RawSettings & { config?: string }, env: NodeJS.ProcessEnv): ServeConfig {
  const fromEnv = envSettings(env);
  const configPath = flags.config ?? env.ZDEDUP_CONFIG;
  const fromFile = configPath !== undefined && configPath !== '' ? fileSettings(configPath) : {};
  const pick = <K extends keyof RawSettings>(k: K): RawSettings[K] => flags[k] ?? fromEnv[k] ?? fromFile[k];

  const stdio = pick('stdio') === true;
  const activated = socketActivationFds(env) > 0;
  const pageSize = parseSize(pick('pageSize') ?? '4K');
  const readOnly = pick('readOnly') === true;
  const logLevel = pick('logLevel') ?? 'info';
  if (!isLogLevel(logLevel)) throw new ZdedupError('ERR_INVALID_ARGUMENT', `--log-level must be error, warn, info or debug, got "${logLevel}"`);

  const exportArgs = pick('export');
  let exports: ExportSpec[];
  if (exportArgs !== undefined && exportArgs.length > 0) {
    exports = exportArgs.map((a) => parseExportArg(a, readOnly));
  } else {
    exports = [{ name: '', size: parseSize(pick('size') ?? DEFAULT_SIZE), readOnly, description: describeExport('', readOnly) }];
  }
  // What a restart keeps, told to clients in the export's description (NBD INFO_DESCRIPTION, LIST).
  for (const e of exports) e.description = `${e.description ?? ''}${pick('persist') === true ? ', durable: flushed writes survive a restart' : ', volatile: a restart starts empty'}`;

  const listenArg = pick('listen');
  const listen = listenArg !== undefined ? parseHostPort(listenArg, DEFAULT_NBD_PORT, '--listen') : null;
  // The unix socket is the default unless TCP was asked for alone, or another transport is in use.
  const socketArg = pick('socket');
  const socket = socketArg ?? (listen === null && !stdio && !activated ? DEFAULT_SOCKET : null);
  // HTTP is on by default for a daemon; a server started by a client (--stdio, activation) opens no
  // port unless asked, so it never collides with a daemon's default port.
  const httpArg = pick('http') ?? (stdio || activated ? 'off' : DEFAULT_HTTP);
  const http = httpArg === 'off' || httpArg === '' ? null : parseHostPort(httpArg, undefined, '--http');

  const maxPoolArg = pick('maxPool');
  const backing = pick('backing') ?? null;
  const backingSizeArg = pick('backingSize');
  const segmentSizeArg = pick('segmentSize');
  const writethrough = pick('writethrough') === true;
  const persist = pick('persist') === true;
  if (persist && backing === null) throw new ZdedupError('ERR_INVALID_ARGUMENT', '--persist needs --backing PATH: the log that survives a restart');
  const ckptArg = pick('checkpointInterval');
  if (ckptArg !== undefined && !persist) throw new ZdedupError('ERR_INVALID_ARGUMENT', '--checkpoint-interval needs --persist');
  const checkpointInterval = ckptArg !== undefined ? parseSize(ckptArg) : undefined;
  if (checkpointInterval !== undefined && checkpointInterval < 4096) throw new ZdedupError('ERR_INVALID_ARGUMENT', `--checkpoint-interval must be at least 4K, got "${ckptArg}"`);
  const maxPool = maxPoolArg !== undefined ? parsePoolLimit(maxPoolArg) : persist ? parseSize(DEFAULT_PERSIST_POOL) : 0;
  const backingOverwrite = pick('backingOverwrite') === true;
  if (backing === null && (backingSizeArg !== undefined || segmentSizeArg !== undefined || writethrough || backingOverwrite)) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', '--backing-size, --segment-size, --backing-overwrite and --writethrough need --backing PATH');
  }
  if (backing !== null && maxPool === 0) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', '--backing needs --max-pool: the disk tier takes what does not fit in a bounded RAM pool');
  }
  const remote = resolveRemoteConfig(pick, maxPool);
  const cold = parseColdSettings(pick('coldCodec'), pick('coldAfter'), pick('coldGroup'));
  const threadsArg = pick('compressThreads');
  const compressThreads = threadsArg !== undefined ? Number(threadsArg) : defaultCompressThreads();
  if (!Number.isSafeInteger(compressThreads) || compressThreads < 0 || compressThreads > 16 || (threadsArg !== undefined && threadsArg.trim() === '')) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', `--compress-threads must be a whole number from 0 to 16, got "${threadsArg}"`);
  }
  if (persist && remote !== null) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', '--persist works with --backing alone: objects in a --remote tier are not part of the durable log');
  }
  if (persist && cold !== null) throw new ZdedupError('ERR_INVALID_ARGUMENT', '--persist and --cold-codec do not go together yet: cold groups are not in the durable log');
  const tlsArg = pick('tls');
  if (tlsArg !== undefined && !isTlsMode(tlsArg)) throw new ZdedupError('ERR_INVALID_ARGUMENT', `--tls must be off, on or require, got "${tlsArg}"`);
  const tlsCertificates = pick('tlsCertificates') ?? null;
  const tlsPsk = pick('tlsPsk') ?? null;
  const tlsVerifyPeer = pick('tlsVerifyPeer') === true;
  if (tlsCertificates !== null && tlsPsk !== null) throw new ZdedupError('ERR_INVALID_ARGUMENT', 'give one of --tls-certificates and --tls-psk, not both');
  if (tlsVerifyPeer && tlsCertificates === null) throw new ZdedupError('ERR_INVALID_ARGUMENT', '--tls-verify-peer needs --tls-certificates DIR');
  const hasCreds = tlsCertificates !== null || tlsPsk !== null;
  if (tlsArg !== undefined && tlsArg !== 'off' && !hasCreds) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', `--tls=${tlsArg} needs credentials: --tls-certificates DIR or --tls-psk FILE`);
  }
  const insecure = pick('insecure') === true;
  if (listen !== null && !isLoopbackHost(listen.host)) {
    const mode = tlsArg ?? 'require';
    if (mode !== 'require' && !insecure) {
      throw new ZdedupError('ERR_INVALID_ARGUMENT',
        `--listen ${listen.host}:${listen.port} is not a loopback address and --tls=${mode} lets clients in without TLS; ` +
        'use --tls=require (the default there), or add --insecure on a trusted network');
    }
    if (mode === 'require' && !hasCreds) {
      throw new ZdedupError('ERR_INVALID_ARGUMENT',
        `--listen ${listen.host}:${listen.port} is not a loopback address, so TLS is required: give --tls-certificates DIR or ` +
        '--tls-psk FILE (or --tls=off --insecure on a trusted network)');
    }
  }
  const socketModeArg = pick('socketMode');
  const socketGroupArg = pick('socketGroup');
  const limits: NbdLimits = {
    maxConnections: intArg(pick('maxConnections'), '--max-connections', DEFAULT_LIMITS.maxConnections, 1),
    handshakeTimeoutMs: secondsArg(pick('handshakeTimeout'), '--handshake-timeout', DEFAULT_LIMITS.handshakeTimeoutMs),
    idleTimeoutMs: secondsArg(pick('idleTimeout'), '--idle-timeout', DEFAULT_LIMITS.idleTimeoutMs),
    maxBufferedBytes: DEFAULT_LIMITS.maxBufferedBytes,
  };
  const maxBufferedArg = pick('maxBuffered');
  if (maxBufferedArg !== undefined) limits.maxBufferedBytes = parseSize(maxBufferedArg);

  const acceptArg = pick('acceptThreshold');
  const acceptThreshold = acceptArg !== undefined ? Number(acceptArg) : 90;
  if (!Number.isFinite(acceptThreshold) || acceptThreshold <= 0 || acceptThreshold > 100) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', `--accept-threshold must be a percentage in (0, 100], got "${String(acceptArg)}"`);
  }
  return {
    socket, listen, http, stdio, exports, pageSize,
    codec: pick('codec') ?? 'lz4',
    sharedDedup: pick('sharedDedup') === true,
    maxPool,
    acceptThreshold,
    backing,
    backingSize: backingSizeArg !== undefined ? parseSize(backingSizeArg) : undefined,
    segmentSize: segmentSizeArg !== undefined ? parseSize(segmentSizeArg) : undefined,
    writethrough,
    backingOverwrite,
    remote,
    cold,
    compressThreads,
    persist,
    checkpointInterval,
    insecure,
    logLevel,
    socketMode: socketModeArg !== undefined ? parseSocketMode(socketModeArg) : 0o600,
    socketGroup: socketGroupArg !== undefined ? resolveGroup(socketGroupArg, readGroupFile()) : undefined,
    limits,
    tls: tlsArg ?? null,
    tlsCertificates,
    tlsPsk,
    tlsVerifyPeer,
  };
}

function readGroupFile(): string {
  try { return readFileSync('/etc/group', 'utf8'); } catch { return ''; }
}

/** An integer flag ≥ `min`, or `dflt` when absent. */
function intArg(v: string | undefined, what: string, dflt: number, min: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < min) throw new ZdedupError('ERR_INVALID_ARGUMENT', `${what} must be an integer ≥ ${min}, got "${v}"`);
  return n;
}

/** Seconds (fractions allowed, 0 = off) → milliseconds, or `dfltMs` when absent. */
function secondsArg(v: string | undefined, what: string, dfltMs: number): number {
  if (v === undefined) return dfltMs;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n < 0) throw new ZdedupError('ERR_INVALID_ARGUMENT', `${what} must be a number of seconds ≥ 0, got "${v}"`);
  return Math.round(n * 1000);
}

/** The TLS mode of one listener: --tls if given, else require off loopback, on with credentials, off. */
export function listenerTlsMode(cfg: Pick<ServeConfig, 'tls' | 'tlsCertificates' | 'tlsPsk'>, nonLoopbackTcp: boolean): TlsMode {
  if (cfg.tls !== null) return cfg.tls;
  if (nonLoopbackTcp) return 'require';
  return cfg.tlsCertificates !== null || cfg.tlsPsk !== null ? 'on' : 'off';
}

function envSettings(env: NodeJS.ProcessEnv): RawSettings {
  const out: Record<string, unknown> = {};
  for (const [k, name] of Object.entries(ENV) as [keyof RawSettings, string][]) {
    const v = env[name];
    if (v === undefined || v === '') continue;
    if (BOOLEAN_KEYS.has(k)) out[k] = parseBool(v, name);
    else if (k === 'export') out[k] = v.split(',').map((s) => s.trim()).filter((s) => s !== '');
    else out[k] = v;
  }
  return out as RawSettings;
}

/** Reads the --config JSON file: keys as the flags, camelCase or kebab-case. */
function fileSettings(path: string): RawSettings {
  let doc: unknown;
  try {
    doc = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', `cannot read config file ${path}: ${(e as Error).message}`);
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', `config file ${path} must hold a JSON object`);
  }
  const out: Record<string, unknown> = {};
  for (const [rawKey, v] of Object.entries(doc as Record<string, unknown>)) {
    let k = rawKey.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase());
    if (k === 'exports') k = 'export';
    if (!(k in ENV)) throw new ZdedupError('ERR_INVALID_ARGUMENT', `config file ${path}: unknown key "${rawKey}"`);
    const key = k as keyof RawSettings;
    if (BOOLEAN_KEYS.has(key)) {
      if (typeof v !== 'boolean') throw new ZdedupError('ERR_INVALID_ARGUMENT', `config file ${path}: "${rawKey}" must be true or false`);
      out[key] = v;
    } else if (key === 'export') {
      const list = Array.isArray(v) ? v : [v];
      out[key] = list.map((x) => {
        if (typeof x === 'string') return x;
        if (x !== null && typeof x === 'object' && typeof (x as { name?: unknown }).name === 'string') {
          const o = x as { name: string; size: string | number; readOnly?: boolean };
          return `${o.name}:${String(o.size)}${o.readOnly === true ? ':ro' : ''}`;
        }
        throw new ZdedupError('ERR_INVALID_ARGUMENT', `config file ${path}: exports are "NAME:SIZE" or {"name", "size"}`);
      });
    } else if (typeof v === 'string' || typeof v === 'number') {
      out[key] = String(v);
    } else {
      throw new ZdedupError('ERR_INVALID_ARGUMENT', `config file ${path}: "${rawKey}" must be a string or number`);
    }
  }
  return out as RawSettings;
}

/** --max-pool: a size ("2G") or a percentage of physical RAM ("25%"). */
export function parsePoolLimit(arg: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*%\s*$/.exec(arg);
  if (m === null) return parseSize(arg);
  const pct = Number(m[1]);
  if (!(pct > 0 && pct <= 100)) throw new ZdedupError('ERR_INVALID_ARGUMENT', `--max-pool "${arg}": a percentage must be in (0, 100]`);
  return Math.floor((os.totalmem() * pct) / 100);
}

/**
 * "NAME:SIZE", "NAME:SIZE:ro", "NAME:SIZE:max-pool=SIZE", or a cache export "NAME:cache=PATH[:ro]";
 * the name may be empty (":1G") and may itself contain colons.
 */
export function parseExportArg(arg: string, allReadOnly: boolean): ExportSpec {
  let s = arg;
  let readOnly = allReadOnly;
  let maxPool: number | undefined;
  const c = s.indexOf(':cache=');
  if (c >= 0) {
    let path = s.slice(c + ':cache='.length);
    if (path.endsWith(':ro')) { readOnly = true; path = path.slice(0, -3); }
    if (path === '') throw new ZdedupError('ERR_INVALID_ARGUMENT', `--export "${arg}": expected NAME:cache=PATH[:ro] (a raw image file)`);
    const name = s.slice(0, c);
    return { name, size: 0, readOnly, description: `zdedup cache of ${path}${readOnly ? ' (read-only)' : ''}`, cache: { path } };
  }
  // Options after the size, in any order: ":ro", ":max-pool=SIZE" (the name itself may hold colons).
  for (;;) {
    if (s.endsWith(':ro')) { readOnly = true; s = s.slice(0, -3); continue; }
    const m = /:max-pool=([^:]*)$/.exec(s);
    if (m) {
      if (maxPool !== undefined) throw new ZdedupError('ERR_INVALID_ARGUMENT', `--export "${arg}": max-pool given twice`);
      maxPool = parseSize(m[1]!);
      if (maxPool === 0) throw new ZdedupError('ERR_INVALID_ARGUMENT', `--export "${arg}": max-pool must be more than 0`);
      s = s.slice(0, m.index);
      continue;
    }
    break;
  }
  const i = s.lastIndexOf(':');
  if (i < 0) throw new ZdedupError('ERR_INVALID_ARGUMENT', `--export "${arg}": expected NAME:SIZE[:ro][:max-pool=SIZE] (e.g. swap:8G, or :1G for the default export)`);
  const name = s.slice(0, i);
  return { name, size: parseSize(s.slice(i + 1)), readOnly, description: describeExport(name, readOnly), ...(maxPool !== undefined ? { maxPool } : {}) };
}

/** The description LIST and INFO_DESCRIPTION report. */
function describeExport(name: string, readOnly: boolean): string {
  return `zdedup ${name === '' ? 'default export' : `export ${name}`}${readOnly ? ' (read-only)' : ''}`;
}

/** "host:port", "port", ":port", "[v6]:port"; host defaults to 127.0.0.1. */
export function parseHostPort(arg: string, defaultPort: number | undefined, what: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*))?(?::(\d+))?$/.exec(arg.trim());
  let host = '127.0.0.1';
  let port: number | undefined = defaultPort;
  if (/^\d+$/.test(arg.trim())) {
    port = Number(arg.trim());
  } else if (m) {
    host = m[1] ?? (m[2] !== undefined && m[2] !== '' ? m[2] : host);
    if (m[3] !== undefined) port = Number(m[3]);
  } else {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', `${what} "${arg}": expected HOST:PORT`);
  }
  if (port === undefined || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', `${what} "${arg}": expected HOST:PORT with a port 0..65535`);
  }
  return { host, port };
}

function parseBool(v: string, name: string): boolean {
  if (/^(1|true|yes|on)$/i.test(v)) return true;
  if (/^(0|false|no|off)$/i.test(v)) return false;
  throw new ZdedupError('ERR_INVALID_ARGUMENT', `${name}="${v}": expected 1/0, true/false, yes/no or on/off`);
}

/** Number of sockets passed by systemd-style socket activation to this very process, else 0. */
function socketActivationFds(env: NodeJS.ProcessEnv): number {
  if (env.LISTEN_PID === undefined || Number(env.LISTEN_PID) !== process.pid) return 0;
  const n = Number(env.LISTEN_FDS);
  return Number.isSafeInteger(n) && n > 0 ? n : 0;
}

// ---------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------

/** Most compression workers chosen by default: on 2 cores, 2 workers wrote 10-25% slower than 1 (they compete with the request thread and the client); see README, "Compression threads". */
const MAX_DEFAULT_COMPRESS_THREADS = 1;

/** The CPUs minus the request thread's, at most MAX_DEFAULT_COMPRESS_THREADS (0 on one CPU). */
export function defaultCompressThreads(): number {
  return Math.max(0, Math.min(MAX_DEFAULT_COMPRESS_THREADS, os.availableParallelism() - 1));
}

/** --cold-codec / --cold-after / --cold-group: null when the cold tier is off. Usage errors are ERR_INVALID_ARGUMENT / ERR_BAD_CODEC. */
function parseColdSettings(codec: string | undefined, after: string | undefined, group: string | undefined): ServeConfig['cold'] {
  if (codec === undefined || codec === 'off') {
    if (after !== undefined || group !== undefined) throw new ZdedupError('ERR_INVALID_ARGUMENT', '--cold-after and --cold-group need --cold-codec zstd:LEVEL');
    return null;
  }
  const afterSeconds = after !== undefined ? Number(after) : DEFAULT_COLD_AFTER_SECONDS;
  const groupPages = group !== undefined ? Number(group) : DEFAULT_COLD_GROUP_PAGES;
  if (after !== undefined && (after.trim() === '' || !Number.isFinite(afterSeconds))) throw new ZdedupError('ERR_INVALID_ARGUMENT', `--cold-after must be a number of seconds, got "${after}"`);
  const o = parseColdOptions({ codec, afterSeconds, groupPages }); // range checks, one place
  return { codec: `zstd:${o.level}`, afterSeconds: o.afterSeconds, groupPages: o.groupPages };
}

/** Runs the server until a signal (or, with --stdio, until its one connection ends). Returns the exit code. */
export async function runServe(cfg: ServeConfig): Promise<number> {
  const log = new Logger(cfg.logLevel);
  let tls: TlsCredentials | undefined;
  if (cfg.tlsCertificates !== null) tls = loadX509(cfg.tlsCertificates, cfg.tlsVerifyPeer);
  else if (cfg.tlsPsk !== null) tls = loadPsk(cfg.tlsPsk, (msg, fields) => log.warn(msg, fields));
  const store = new PageStore({
    pageSize: cfg.pageSize, codec: cfg.codec, sharedDedup: cfg.sharedDedup, maxPoolBytes: cfg.maxPool,
    acceptThresholdPercent: cfg.acceptThreshold, writethrough: cfg.writethrough,
    ...tierOptions(cfg, (level, msg, fields) => log[level](msg, fields)),
    cold: cfg.cold ?? undefined,
    compressThreads: cfg.compressThreads,
    persist: cfg.persist ? { checkpointBytes: cfg.checkpointInterval } : false,
    background: true, // writeback, cleaning and compaction (src/core/maintenance.ts)
    events: (level, msg, fields) => log[level](msg, fields),
  });
  const nbd = new NbdServer({ store, pageSize: cfg.pageSize, exports: cfg.exports, log, limits: cfg.limits, tls });
  const localTls = { tls: listenerTlsMode(cfg, false) };

  let done!: (code: number) => void;
  const finished = new Promise<number>((r) => { done = r; });
  let stopping = false;
  let httpServer: StatsHttpServer | undefined;
  const stop = async (why: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    log.info('stopping', { why });
    await nbd.close();
    await httpServer?.close();
    await store.close();
    log.info('stopped', { counters: nbd.counters.toJSON() });
    done(0);
  };
  const onSignal = (sig: NodeJS.Signals): void => { void stop(sig); };
  // SIGHUP would otherwise kill the process without removing the socket: nothing to reopen
  // (logs go to stderr), so it is logged and ignored. SIGUSR1: see bin/zdedup.js.
  const onHup = (): void => log.info('SIGHUP ignored (logs go to stderr; nothing to reload)');
  const onUsr1 = (): void => log.warn('SIGUSR1 ignored (the Node inspector is disabled in zdedup)');
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  process.on('SIGHUP', onHup);
  process.on('SIGUSR1', onUsr1);

  const where: Record<string, unknown> = {};
  try {
    const activated = socketActivationFds(process.env);
    if (activated > 0) {
      delete process.env.LISTEN_PID;
      delete process.env.LISTEN_FDS;
      delete process.env.LISTEN_FDNAMES;
      for (let fd = 3; fd < 3 + activated; fd++) await nbd.listenFd(fd, localTls);
      where.activation_fds = activated;
    } else if (cfg.stdio) {
      const input = new net.Socket({ fd: 0, readable: true, writable: false });
      const output = new net.Socket({ fd: 1, readable: false, writable: true });
      void nbd.serveStreams(input, output, localTls).then(() => stop('stdio connection closed'));
      where.stdio = true;
    }
    if (activated === 0 && !cfg.stdio) {
      if (cfg.socket !== null) {
        await nbd.listenUnix(cfg.socket, { mode: cfg.socketMode, gid: cfg.socketGroup, ...localTls });
        where.socket = cfg.socket;
        where.tls = localTls.tls;
      }
      if (cfg.listen !== null) {
        const tcpTls = listenerTlsMode(cfg, !isLoopbackHost(cfg.listen.host));
        const port = await nbd.listenTcp(cfg.listen.host, cfg.listen.port, { tls: tcpTls });
        where.tcp = `${cfg.listen.host}:${port}`;
        where.tcp_tls = tcpTls;
        if (tcpTls !== 'require' && !isLoopbackHost(cfg.listen.host)) {
          log.warn('NBD on a non-loopback address without required TLS (--insecure): anyone who can reach it can read and write the exports', { tcp: where.tcp });
        }
      }
    }
    if (cfg.http !== null) {
      httpServer = new StatsHttpServer({ ...cfg.http, store, nbd, log, version: version(), insecure: cfg.insecure });
      const port = await httpServer.listen();
      where.http = `${cfg.http.host}:${port}`;
    }
  } catch (e) {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    process.off('SIGHUP', onHup);
    process.off('SIGUSR1', onUsr1);
    await nbd.close(0);
    await httpServer?.close();
    await store.close();
    const err = e as NodeJS.ErrnoException;
    if (e instanceof ZdedupError) throw e;
    throw new ZdedupError('ERR_IO', `cannot listen: ${err.message}`, { cause: e });
  }
  log.info('ready', {
    ...where,
    exports: cfg.exports.map((e) => ({ name: e.name, size: e.size, read_only: e.readOnly === true })),
    page_size: cfg.pageSize, codec: cfg.codec, shared_dedup: cfg.sharedDedup, max_pool: cfg.maxPool,
    accept_threshold: cfg.acceptThreshold, backing: cfg.backing, backing_size: store.stats().backing_size,
    writethrough: cfg.writethrough, persist: cfg.persist, compress_threads: cfg.persist ? 0 : cfg.compressThreads, pid: process.pid,
    ...(cfg.remote !== null ? { remote: cfg.remote.url, remote_domain: cfg.remote.domain, remote_placement: cfg.backing !== null ? cfg.remote.placement : null } : {}),
    ...(cfg.cold !== null ? { cold_codec: cfg.cold.codec, cold_after: cfg.cold.afterSeconds, cold_group: cfg.cold.groupPages } : {}),
    max_connections: cfg.limits.maxConnections, handshake_timeout_ms: cfg.limits.handshakeTimeoutMs,
    idle_timeout_ms: cfg.limits.idleTimeoutMs, max_buffered: cfg.limits.maxBufferedBytes,
    ...(tls !== undefined ? { tls_credentials: tls.kind } : {}),
  });
  const code = await finished;
  process.off('SIGTERM', onSignal);
  process.off('SIGINT', onSignal);
  process.off('SIGHUP', onHup);
  process.off('SIGUSR1', onUsr1);
  return code;
}

/** The store's tier: --backing alone (built by the store), or --remote (with --backing: both, under the placement policy). */
function tierOptions(cfg: ServeConfig, events: (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void): Pick<ConstructorParameters<typeof PageStore>[0] & object, 'backing' | 'tier'> {
  const backing = cfg.backing !== null ? { path: cfg.backing, size: cfg.backingSize, segmentSize: cfg.segmentSize, overwrite: cfg.backingOverwrite } : undefined;
  if (cfg.remote === null) return { backing };
  return { tier: buildRemoteTier(cfg.remote, { pageSize: cfg.pageSize, codec: cfg.codec, backing, events }) };
}
