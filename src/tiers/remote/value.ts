/**
 * What the remote tier puts in Redis: content-addressed, tenant-scoped keys and self-checking values.
 *
 * Key: `zd:<domain>:<k>` where k = base64url of the first 16 bytes (128 bits) of
 * HMAC-SHA256(K_domain, uncompressed page), and K_domain = HMAC-SHA256(secret, "zdedup-remote-v1\0" + domain).
 * Hosts with the same domain and secret derive the same key for the same page (cross-host dedup);
 * without the secret nobody can compute the key of a guessed page, so content cannot be probed
 * from another domain (the domain name in the key only namespaces it). base64url has no `{` or
 * `}`, so a key never carries an accidental hash tag: keys spread over all 16384 slots.
 *
 * Value (little-endian), 16-byte header then the payload as the writer stored it:
 *
 *   off size field
 *   0   2    magic 0x5a56 ("VZ")
 *   2   1    version (1)
 *   3   1    codec of the payload: 0 raw, 1 lz4, 2 zstd
 *   4   4    payload length
 *   8   4    uncompressed length (the page size)
 *   12  4    CRC-32 of bytes 0..11 and the payload
 *
 * A value that fails any check (magic, version, lengths, CRC, and after a transcode the keyed
 * hash itself) is an EIO for the load, never data.
 */
import { createHmac } from 'node:crypto';
import { crc32 } from 'node:zlib';

export const VALUE_MAGIC = 0x5a56;
export const VALUE_VERSION = 1;
export const VALUE_HEADER = 16;
/** Bytes of the content key (128 bits). */
export const KEY_BYTES = 16;

/** Dedup domain names: what may appear in a Redis key without quoting. */
export const DOMAIN_RE = /^[A-Za-z0-9._-]{1,64}$/;

/** The per-domain HMAC key. */
export function domainKey(secret: Uint8Array, domain: string): Buffer {
  return createHmac('sha256', secret).update('zdedup-remote-v1\0').update(domain).digest();
}

/** The 128-bit content key of page[0, n) into out[at, at+4) as four u32 words. */
export function contentKey(kDomain: Buffer, page: Uint8Array, n: number, out: Uint32Array, at: number): void {
  const d = createHmac('sha256', kDomain).update(page.subarray(0, n)).digest();
  out[at] = d.readUInt32LE(0); out[at + 1] = d.readUInt32LE(4); out[at + 2] = d.readUInt32LE(8); out[at + 3] = d.readUInt32LE(12);
}

const keyScratch = Buffer.alloc(KEY_BYTES);

/** The Redis key of the content key in words[at, at+4). */
export function redisKey(prefix: string, words: Uint32Array, at: number): string {
  keyScratch.writeUInt32LE(words[at]!, 0); keyScratch.writeUInt32LE(words[at + 1]!, 4);
  keyScratch.writeUInt32LE(words[at + 2]!, 8); keyScratch.writeUInt32LE(words[at + 3]!, 12);
  return prefix + keyScratch.toString('base64url');
}

/** A value: header + a copy of src[off, off+len). */
export function encodeValue(codec: number, src: Uint8Array, off: number, len: number, pageSize: number): Buffer {
  const v = Buffer.allocUnsafe(VALUE_HEADER + len);
  v.writeUInt16LE(VALUE_MAGIC, 0);
  v[2] = VALUE_VERSION;
  v[3] = codec;
  v.writeUInt32LE(len, 4);
  v.writeUInt32LE(pageSize, 8);
  v.set(src.subarray(off, off + len), VALUE_HEADER);
  v.writeUInt32LE(valueCrc(v), 12);
  return v;
}

function valueCrc(v: Buffer): number {
  return crc32(v.subarray(VALUE_HEADER), crc32(v.subarray(0, 12)));
}

/** Checks a value read back; returns its codec (>= 0) or a reason it is bad. */
export function checkValue(v: Buffer, pageSize: number): number | string {
  if (v.length < VALUE_HEADER) return 'value shorter than its header';
  if (v.readUInt16LE(0) !== VALUE_MAGIC || v[2] !== VALUE_VERSION) return 'bad magic or version';
  const len = v.readUInt32LE(4);
  if (len !== v.length - VALUE_HEADER || len === 0 || len > pageSize) return `bad payload length ${len}`;
  if (v.readUInt32LE(8) !== pageSize) return `page size ${v.readUInt32LE(8)} != ${pageSize}`;
  if (v.readUInt32LE(12) !== valueCrc(v)) return 'checksum mismatch';
  const codec = v[3]!;
  if (codec > 2) return `unknown codec ${codec}`;
  return codec;
}
