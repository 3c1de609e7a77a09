/**
 * The hardening settings of `zdedup serve` as a configuration: the socket-directory rule, socket
 * modes and groups, the TLS mode of each listener and the non-loopback rule, limit flags and their
 * environment names, and the rate limit on refusal logs.
 */
import assert from 'node:assert/strict';
import type { Stats } from 'node:fs';
import { describe, test } from 'node:test';
import { listenerTlsMode, resolveServeConfig } from '../../src/frontends/cli/commands/serve.js';
import { Logger, RateLimitedLog } from '../../src/frontends/log.js';
import { DEFAULT_LIMITS } from '../../src/frontends/nbd/server.js';
import { parseSocketMode, resolveGroup } from '../../src/frontends/nbd/unix-socket.js';
import { unsafeDirectoryReason } from '../../src/frontends/paths.js';

function dirStats(uid: number, mode: number): Stats {
  return { isDirectory: () => true, uid, mode: 0o40000 | mode } as unknown as Stats;
}

describe('hardening configuration', () => {
  test('socket directories: ours or root\'s, not writable by group or others, except a root-owned sticky one', () => {
    assert.equal(unsafeDirectoryReason(dirStats(1000, 0o700), 1000), null);
    assert.equal(unsafeDirectoryReason(dirStats(0, 0o755), 1000), null, 'root-owned /run');
    assert.equal(unsafeDirectoryReason(dirStats(0, 0o1777), 1000), null, '/tmp');
    assert.match(unsafeDirectoryReason(dirStats(1001, 0o700), 1000)!, /owned by uid 1001/);
    assert.match(unsafeDirectoryReason(dirStats(1000, 0o777), 1000)!, /writable by others/);
    assert.match(unsafeDirectoryReason(dirStats(1000, 0o770), 1000)!, /writable by its group/);
    assert.match(unsafeDirectoryReason(dirStats(1000, 0o1777), 1000)!, /writable by others/, 'sticky helps only when root owns it');
    assert.match(unsafeDirectoryReason({ isDirectory: () => false, uid: 1000, mode: 0 } as unknown as Stats, 1000)!, /not a directory/);
  });

  test('--socket-mode and --socket-group', () => {
    assert.equal(parseSocketMode('0600'), 0o600);
    assert.equal(parseSocketMode('660'), 0o660);
    assert.equal(parseSocketMode('0o666'), 0o666);
    assert.throws(() => parseSocketMode('0400'), /owner needs read and write/);
    assert.throws(() => parseSocketMode('rw'), /octal/);
    assert.throws(() => parseSocketMode('01777'), /octal/);
    const groups = 'root:x:0:\ndisk:x:6:\nkvm:x:104:alice\n';
    assert.equal(resolveGroup('disk', groups), 6);
    assert.equal(resolveGroup('104', groups), 104);
    assert.throws(() => resolveGroup('nope', groups), /no such group/);
    const c = resolveServeConfig({ socket: '/tmp/x/z.sock', socketMode: '0660', socketGroup: '0' }, {});
    assert.equal(c.socketMode, 0o660);
    assert.equal(c.socketGroup, 0);
    assert.equal(resolveServeConfig({}, { ZDEDUP_SOCKET_MODE: '0666' }).socketMode, 0o666);
    assert.equal(resolveServeConfig({}, {}).socketMode, 0o600);
  });

  test('TLS per listener: --tls wins; else require on a non-loopback --listen, on with credentials, off', () => {
    const none = { tls: null, tlsCertificates: null, tlsPsk: null };
    assert.equal(listenerTlsMode(none, false), 'off');
    assert.equal(listenerTlsMode({ ...none, tlsPsk: '/k' }, false), 'on');
    assert.equal(listenerTlsMode({ ...none, tlsPsk: '/k' }, true), 'require');
    assert.equal(listenerTlsMode({ ...none, tls: 'off', tlsPsk: '/k' }, true), 'off');
    assert.throws(() => resolveServeConfig({ listen: '0.0.0.0:10809' }, {}), /not a loopback address, so TLS is required/);
    assert.throws(() => resolveServeConfig({ listen: '10.0.0.1:10809', tls: 'off' }, {}), /--insecure/);
    assert.throws(() => resolveServeConfig({ listen: '0.0.0.0:1', tls: 'on', tlsPsk: '/k' }, {}), /lets clients in without TLS/);
    assert.doesNotThrow(() => resolveServeConfig({ listen: '0.0.0.0:1', tls: 'off', insecure: true }, {}));
    assert.doesNotThrow(() => resolveServeConfig({ listen: '0.0.0.0:1', tlsPsk: '/k' }, {}));
    assert.doesNotThrow(() => resolveServeConfig({ listen: '127.0.0.1:1' }, {}), 'loopback: no TLS needed');
    assert.throws(() => resolveServeConfig({ tls: 'require' }, {}), /needs credentials/);
    assert.throws(() => resolveServeConfig({ tls: 'maybe' }, {}), /off, on or require/);
    assert.throws(() => resolveServeConfig({ tlsPsk: '/k', tlsCertificates: '/d' }, {}), /not both/);
    assert.throws(() => resolveServeConfig({ tlsVerifyPeer: true, tlsPsk: '/k' }, {}), /--tls-verify-peer needs --tls-certificates/);
    const env = resolveServeConfig({}, { ZDEDUP_TLS: 'require', ZDEDUP_TLS_PSK: '/k' });
    assert.equal(env.tls, 'require');
    assert.equal(env.tlsPsk, '/k');
  });

  test('limits: defaults 64 connections, 10 s handshake, 60 s idle, 256 MiB buffered; flags and environment', () => {
    const d = resolveServeConfig({}, {});
    assert.deepEqual(d.limits, DEFAULT_LIMITS);
    assert.equal(d.limits.maxConnections, 64);
    assert.equal(d.limits.handshakeTimeoutMs, 10_000);
    const c = resolveServeConfig({ maxConnections: '8', handshakeTimeout: '2.5', idleTimeout: '0', maxBuffered: '64M' }, {});
    assert.deepEqual(c.limits, { maxConnections: 8, handshakeTimeoutMs: 2500, idleTimeoutMs: 0, maxBufferedBytes: 64 * 2 ** 20 });
    assert.equal(resolveServeConfig({}, { ZDEDUP_MAX_CONNECTIONS: '3' }).limits.maxConnections, 3);
    assert.throws(() => resolveServeConfig({ maxConnections: '0' }, {}), /--max-connections must be an integer ≥ 1/);
    assert.throws(() => resolveServeConfig({ handshakeTimeout: '-1' }, {}), /--handshake-timeout/);
    assert.throws(() => resolveServeConfig({ idleTimeout: 'soon' }, {}), /--idle-timeout/);
  });

  test('refusal logs are rate-limited per kind and report how many were left out', () => {
    const lines: Record<string, unknown>[] = [];
    const rl = new RateLimitedLog(new Logger('info', { write: (s: string) => lines.push(JSON.parse(s) as Record<string, unknown>) }), 3, 1000);
    for (let i = 0; i < 10; i++) rl.warn('a', 'refused', { i }, 5000);
    rl.warn('b', 'other', {}, 5000);
    assert.equal(lines.filter((l) => l.msg === 'refused').length, 3);
    assert.equal(lines.filter((l) => l.msg === 'other').length, 1, 'kinds are limited separately');
    rl.warn('a', 'refused', {}, 6000);
    assert.equal(lines.at(-1)!.suppressed, 7, 'the next window says how many were left out');
  });
});
