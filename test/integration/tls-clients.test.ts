/**
 * NBD over TLS with real clients nobody here wrote: nbdinfo and nbdcopy (libnbd, GnuTLS) with
 * nbds:// URIs, tls-psk-file and tls-certificates, and qemu-img with tls-creds-psk / tls-creds-x509
 * objects. Credentials are made in the test: a CA and server/client certificates with openssl, PSK
 * keys with psktool (gnutls-bin) or, without it, openssl rand in the same `user:hex` format.
 * Refusals are checked too: a plaintext client when TLS is required, a wrong key, an unknown user,
 * a client without a certificate under --tls-verify-peer, and the non-loopback default.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ZDEDUP, REPO, hasTool, httpGet, run, runOk, startServer, type Server } from './nbd/harness.js';
import { spawnSync } from 'node:child_process';

const MiB = 1024 * 1024;

function skipUnless(t: { skip(msg: string): void }, ...tools: string[]): boolean {
  for (const tool of tools) {
    if (!hasTool(tool)) {
      t.skip(`${tool} not installed`);
      return true;
    }
  }
  return false;
}

/** openssl, run synchronously in `cwd`; throws with its stderr on failure. */
function openssl(cwd: string, args: string[]): void {
  const r = spawnSync('openssl', args, { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
}

/**
 * DIR/ca-cert.pem, server-cert.pem + server-key.pem (CN and SAN localhost, 127.0.0.1) and
 * client-cert.pem + client-key.pem, all signed by the CA: the layout nbdkit, qemu and libnbd use.
 */
function makePki(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl(dir, ['req', '-x509', ...ec, '-keyout', 'ca-key.pem', '-out', 'ca-cert.pem', '-days', '2', '-subj', '/CN=zdedup test CA']);
  for (const [who, ext] of [['server', 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n'], ['client', 'extendedKeyUsage=clientAuth\n']] as const) {
    openssl(dir, ['req', ...ec, '-keyout', `${who}-key.pem`, '-out', `${who}.csr`, '-subj', `/CN=${who === 'server' ? 'localhost' : 'zdedup test client'}`]);
    writeFileSync(join(dir, `${who}.ext`), ext);
    openssl(dir, ['x509', '-req', '-in', `${who}.csr`, '-CA', 'ca-cert.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial', '-out', `${who}-cert.pem`, '-days', '2', '-extfile', `${who}.ext`]);
  }
}

/** A PSK file `user:hexkey` (psktool when installed), mode 0600. */
function makePsk(file: string, user: string): void {
  if (hasTool('psktool')) {
    const r = spawnSync('psktool', ['-u', user, '-p', file], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`psktool: ${r.stderr}`);
  } else {
    writeFileSync(file, `${user}:${randomBytes(32).toString('hex')}\n`);
  }
  chmodSync(file, 0o600);
}

async function nbdStats(s: Server): Promise<Record<string, number>> {
  return (JSON.parse(await httpGet(s.http!, '/stats')) as { nbd: Record<string, number> }).nbd;
}

describe('NBD over TLS with real clients', () => {
  let dir: string;
  let pki: string;
  let psk: string;
  let wrongPsk: string;
  let malloryPsk: string;
  let data: string;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'zdedup-tls-'));
    pki = join(dir, 'pki');
    psk = join(dir, 'keys.psk');
    wrongPsk = join(dir, 'wrong.psk');
    malloryPsk = join(dir, 'mallory.psk');
    data = join(dir, 'data.img');
    if (hasTool('openssl')) makePki(pki);
    if (hasTool('openssl') || hasTool('psktool')) {
      makePsk(psk, 'alice');
      makePsk(wrongPsk, 'alice'); // same user, another key
      makePsk(malloryPsk, 'mallory'); // a user the server does not know
    }
    // 8 MiB: random, text and zero pages, so compression and dedup both run under TLS.
    const b = Buffer.alloc(8 * MiB);
    randomBytes(2 * MiB).copy(b, 0);
    b.write('zdedup over TLS '.repeat(65536), 4 * MiB, 'latin1');
    writeFileSync(data, b);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('PSK (TLS required on a unix socket): nbdinfo and nbdcopy round trip; plaintext, a wrong key and an unknown user are refused', async (t) => {
    if (skipUnless(t, 'nbdinfo', 'nbdcopy', 'openssl')) return;
    const s = await startServer(['--size', '16M', '--tls', 'require', '--tls-psk', psk]);
    try {
      const uri = (keys: string, user = 'alice'): string => `nbds+unix://${user}@/?socket=${s.socket}&tls-psk-file=${keys}`;
      const info = JSON.parse((await runOk('nbdinfo', ['--json', uri(psk)])).stdout) as { TLS: boolean; exports: { 'export-size': number }[] };
      assert.equal(info.TLS, true);
      assert.equal(info.exports[0]!['export-size'], 16 * MiB);
      await runOk('nbdcopy', [data, uri(psk)]);
      const back = join(dir, 'back-psk.img');
      await runOk('nbdcopy', ['--', uri(psk), back]);
      assert.ok(readFileSync(back).subarray(0, 8 * MiB).equals(readFileSync(data)), 'data read back over TLS is what was written');

      const plain = await run('nbdinfo', [`nbd+unix:///?socket=${s.socket}`]);
      assert.notEqual(plain.code, 0, 'plaintext client refused');
      const wrong = await run('nbdinfo', [uri(wrongPsk)]);
      assert.notEqual(wrong.code, 0, 'wrong key refused');
      const nobody = await run('nbdinfo', [uri(malloryPsk, 'mallory')]);
      assert.notEqual(nobody.code, 0, 'unknown user refused');
      const n = await nbdStats(s);
      assert.ok(n.tls_handshakes! >= 3, 'TLS sessions counted');
      assert.ok(n.tls_refused! >= 1, 'the plaintext options were answered ERR_TLS_REQD');
      assert.ok(n.tls_handshake_failed! >= 2, 'wrong key and unknown user counted');
      assert.ok(await runOk('nbdinfo', ['--json', uri(psk)]), 'still serving');
    } finally {
      assert.equal((await s.stop()).code, 0);
    }
  });

  test('x509 on TCP loopback: nbdinfo nbds://, qemu-img with tls-creds-x509 writes, nbdcopy reads back; plaintext refused', async (t) => {
    if (skipUnless(t, 'nbdinfo', 'nbdcopy', 'qemu-img', 'openssl')) return;
    const s = await startServer(['--size', '16M', '--listen', '127.0.0.1:0', '--tls', 'require', '--tls-certificates', pki]);
    try {
      const tcp = String(s.logs.find((l) => l.msg === 'ready')!.tcp);
      const port = tcp.slice(tcp.lastIndexOf(':') + 1);
      const info = JSON.parse((await runOk('nbdinfo', ['--json', `nbds://localhost:${port}/?tls-certificates=${pki}`])).stdout) as { TLS: boolean };
      assert.equal(info.TLS, true);
      await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '--object', `tls-creds-x509,id=t0,endpoint=client,dir=${pki}`,
        '--target-image-opts', data, `driver=nbd,server.type=inet,server.host=localhost,server.port=${port},tls-creds=t0`]);
      const back = join(dir, 'back-x509.img');
      await runOk('nbdcopy', ['--', `nbds://localhost:${port}/?tls-certificates=${pki}`, back]);
      assert.ok(readFileSync(back).subarray(0, 8 * MiB).equals(readFileSync(data)), 'what qemu-img wrote, nbdcopy reads back');
      const plain = await run('nbdinfo', [`nbd://localhost:${port}/`]);
      assert.notEqual(plain.code, 0, 'plaintext refused');
      const noTls = await run('qemu-img', ['info', `nbd://localhost:${port}/`]);
      assert.notEqual(noTls.code, 0, 'qemu-img without tls-creds refused');
    } finally {
      assert.equal((await s.stop()).code, 0);
    }
  });

  test('qemu-img with a tls-creds-psk object (DIR/keys.psk, username=alice)', async (t) => {
    if (skipUnless(t, 'qemu-img', 'openssl')) return;
    const credDir = join(dir, 'qemu-psk');
    mkdirSync(credDir, { mode: 0o700 });
    copyFileSync(psk, join(credDir, 'keys.psk'));
    const s = await startServer(['--size', '16M', '--tls', 'require', '--tls-psk', psk]);
    try {
      const obj = `tls-creds-psk,id=t0,endpoint=client,dir=${credDir},username=alice`;
      const opts = `driver=nbd,server.type=unix,server.path=${s.socket},tls-creds=t0`;
      await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '--object', obj, '--target-image-opts', data, opts]);
      const r = await runOk('qemu-img', ['info', '--output=json', '--object', obj, '--image-opts', opts]);
      assert.equal((JSON.parse(r.stdout) as { 'virtual-size': number })['virtual-size'], 16 * MiB);
      assert.ok((await nbdStats(s)).bytes_written! >= 3 * MiB, 'the data went through'); // 3 MiB are not zero; qemu-img may skip zeroes
    } finally {
      assert.equal((await s.stop()).code, 0);
    }
  });

  test('--tls-verify-peer: a client without a certificate is refused, one with a CA-signed certificate is served', async (t) => {
    if (skipUnless(t, 'nbdinfo', 'openssl')) return;
    const serverOnly = join(dir, 'ca-only');
    mkdirSync(serverOnly, { mode: 0o700 });
    copyFileSync(join(pki, 'ca-cert.pem'), join(serverOnly, 'ca-cert.pem'));
    const s = await startServer(['--size', '1M', '--tls', 'require', '--tls-certificates', pki, '--tls-verify-peer']);
    try {
      const ok = await runOk('nbdinfo', ['--json', `nbds+unix:///?socket=${s.socket}&tls-certificates=${pki}`]);
      assert.equal((JSON.parse(ok.stdout) as { TLS: boolean }).TLS, true);
      const anon = await run('nbdinfo', [`nbds+unix:///?socket=${s.socket}&tls-certificates=${serverOnly}`]);
      assert.notEqual(anon.code, 0, 'no client certificate: refused');
      assert.ok((await nbdStats(s)).tls_handshake_failed! >= 1);
    } finally {
      assert.equal((await s.stop()).code, 0);
    }
  });

  test('a non-loopback --listen requires TLS by default; without credentials it needs --tls=off --insecure', async (t) => {
    if (skipUnless(t, 'nbdinfo', 'openssl')) return;
    const r = spawnSync(process.execPath, [ZDEDUP, 'serve', '--listen', '0.0.0.0:0', '--http', 'off'], { cwd: REPO, encoding: 'utf8' });
    assert.equal(r.status, 2);
    assert.match(r.stderr, /^zdedup: ERR_INVALID_ARGUMENT: --listen 0\.0\.0\.0:0 is not a loopback address, so TLS is required/);
    const on = spawnSync(process.execPath, [ZDEDUP, 'serve', '--listen', '0.0.0.0:0', '--http', 'off', '--tls', 'on', '--tls-psk', psk], { cwd: REPO, encoding: 'utf8' });
    assert.equal(on.status, 2, '--tls=on there lets plaintext in: needs --insecure too');
    const s = await startServer(['--size', '1M', '--listen', '0.0.0.0:0', '--tls-psk', psk]);
    try {
      const ready = s.logs.find((l) => l.msg === 'ready')!;
      assert.equal(ready.tcp_tls, 'require');
      assert.equal(ready.tls, 'on', 'the unix socket offers TLS (credentials given) but does not require it');
      const port = String(ready.tcp).split(':').pop();
      const plain = await run('nbdinfo', [`nbd://127.0.0.1:${port}/`]);
      assert.notEqual(plain.code, 0, 'plaintext refused on the non-loopback listener');
      await runOk('nbdinfo', [`nbds://alice@127.0.0.1:${port}/?tls-psk-file=${psk}`]);
      await runOk('nbdinfo', [s.uri()]); // plaintext on the unix socket is still allowed ('on')
    } finally {
      assert.equal((await s.stop()).code, 0);
    }
    const insecure = await startServer(['--size', '1M', '--listen', '0.0.0.0:0', '--tls', 'off', '--insecure']);
    try {
      assert.ok(insecure.logs.some((l) => l.msg === 'NBD on a non-loopback address without required TLS (--insecure): anyone who can reach it can read and write the exports'));
    } finally {
      assert.equal((await insecure.stop()).code, 0);
    }
  });
});
