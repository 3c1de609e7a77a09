/**
 * TLS for NBD (STARTTLS in the option phase), with the conventions of nbdkit and qemu-nbd so the
 * same credentials and clients work unchanged:
 *
 *   --tls=off|on|require     off: STARTTLS is refused (ERR_UNSUP); on: offered, plaintext allowed;
 *                            require: every option but STARTTLS and ABORT is answered ERR_TLS_REQD
 *                            until TLS is up (EXPORT_NAME, which has no error reply, disconnects)
 *   --tls-certificates DIR   x509: DIR/server-cert.pem, DIR/server-key.pem, and DIR/ca-cert.pem
 *                            (the CA clients are checked against with --tls-verify-peer)
 *   --tls-psk FILE           pre-shared keys, psktool's format: one `username:hexkey` per line
 *
 * The credentials are read once, at start, into one SecureContext shared by every connection.
 * startTls() wraps a connection's raw stream in a server-side tls.TLSSocket after the STARTTLS
 * ACK has been written in plaintext; the connection then reads and writes through it.
 *
 * Versions and ciphers (checked against GnuTLS, which libnbd and qemu use): TLS 1.2 and 1.3. With
 * PSK, TLS 1.2 needs PSK cipher suites named explicitly (Node's default list excludes them), ECDHE
 * first for forward secrecy; TLS 1.3 PSK works with Node 20's pskCallback and the SHA-256 suites.
 */
import { readFileSync, statSync } from 'node:fs';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import { join } from 'node:path';
import { ZdedupError } from '../../core/errors.js';

export type TlsMode = 'off' | 'on' | 'require';

export function isTlsMode(s: string): s is TlsMode {
  return s === 'off' || s === 'on' || s === 'require';
}

/** TLS 1.2 PSK suites (ECDHE first) and the TLS 1.3 suites usable with a SHA-256 PSK. */
const PSK_CIPHERS = [
  'ECDHE-PSK-CHACHA20-POLY1305', 'ECDHE-PSK-AES256-CBC-SHA384', 'ECDHE-PSK-AES128-CBC-SHA256',
  'PSK-AES256-GCM-SHA384', 'PSK-AES128-GCM-SHA256', 'PSK-CHACHA20-POLY1305',
  'TLS_AES_128_GCM_SHA256', 'TLS_CHACHA20_POLY1305_SHA256',
].join(':');

/** Loaded credentials: what a server-side TLSSocket needs, built once. */
export interface TlsCredentials {
  kind: 'x509' | 'psk';
  /** For logs: the directory or file they came from. */
  source: string;
  /** Options for new tls.TLSSocket(raw, options). */
  socketOptions: tls.TLSSocketOptions;
}

/**
 * x509 credentials from DIR (server-cert.pem, server-key.pem; ca-cert.pem when present or when
 * `verifyPeer`). Throws ERR_INVALID_ARGUMENT naming the missing or unreadable file.
 */
export function loadX509(dir: string, verifyPeer: boolean): TlsCredentials {
  const read = (name: string, required: boolean): Buffer | undefined => {
    const p = join(dir, name);
    try {
      return readFileSync(p);
    } catch (e) {
      if (!required && (e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new ZdedupError('ERR_INVALID_ARGUMENT', `--tls-certificates ${dir}: cannot read ${name}: ${(e as Error).message}`, { cause: e });
    }
  };
  const cert = read('server-cert.pem', true)!;
  const key = read('server-key.pem', true)!;
  const ca = read('ca-cert.pem', verifyPeer);
  let secureContext: tls.SecureContext;
  try {
    secureContext = tls.createSecureContext({ cert, key, ca, minVersion: 'TLSv1.2' });
  } catch (e) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', `--tls-certificates ${dir}: ${(e as Error).message}`, { cause: e });
  }
  return {
    kind: 'x509', source: dir,
    socketOptions: { isServer: true, secureContext, requestCert: verifyPeer, rejectUnauthorized: verifyPeer },
  };
}

/**
 * Parses psktool's key file: `username:hexkey` per line (blank lines and # comments skipped).
 * Throws ERR_INVALID_ARGUMENT with the line number on anything else. Usernames must be unique.
 */
export function parsePskFile(text: string, what: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === '' || line.startsWith('#')) continue;
    const colon = line.lastIndexOf(':');
    const user = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    if (colon <= 0 || !/^(?:[0-9a-fA-F]{2})+$/.test(hex)) {
      throw new ZdedupError('ERR_INVALID_ARGUMENT', `${what} line ${i + 1}: expected username:hexkey (psktool's format)`);
    }
    if (keys.has(user)) throw new ZdedupError('ERR_INVALID_ARGUMENT', `${what} line ${i + 1}: username "${user}" appears twice`);
    keys.set(user, Buffer.from(hex, 'hex'));
  }
  if (keys.size === 0) throw new ZdedupError('ERR_INVALID_ARGUMENT', `${what}: no keys`);
  return keys;
}

/** PSK credentials from a psktool key file. `warn` hears about a key file others can read. */
export function loadPsk(file: string, warn: (msg: string, fields: Record<string, unknown>) => void = () => {}): TlsCredentials {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
    const mode = statSync(file).mode;
    if ((mode & 0o077) !== 0) warn('TLS PSK file is readable by group or others', { file, mode: (mode & 0o777).toString(8) });
  } catch (e) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', `--tls-psk ${file}: ${(e as Error).message}`, { cause: e });
  }
  const keys = parsePskFile(text, `--tls-psk ${file}`);
  const secureContext = tls.createSecureContext({ ciphers: PSK_CIPHERS, minVersion: 'TLSv1.2' });
  return {
    kind: 'psk', source: file,
    socketOptions: {
      isServer: true, secureContext,
      // An unknown identity returns null: the handshake fails and the client sees an alert.
      pskCallback: (_socket: tls.TLSSocket, identity: string) => keys.get(identity) ?? null,
    } as tls.TLSSocketOptions,
  };
}

/**
 * Wraps a connection's streams in a server-side TLS socket. `input === output` for sockets; for
 * --stdio (two one-way sockets) they are joined into one duplex first.
 */
export function startTls(input: Duplex, output: Duplex, creds: TlsCredentials): tls.TLSSocket {
  const raw = input === output ? input : Duplex.from({ readable: input, writable: output });
  return new tls.TLSSocket(raw, creds.socketOptions);
}
