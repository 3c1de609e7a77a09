/**
 * The connection's input: socket chunks queued as they arrive, consumed by the parser in exact
 * amounts. Bytes are never dropped and never re-concatenated wholesale (Buffer.concat of every
 * chunk is what made a naive Node server slow on 1 MiB writes): a read that lies inside the head
 * chunk is a subarray of it; only a read that spans chunks copies, once, into a buffer whose size
 * the caller has already validated.
 *
 *   chunks: [ c0 (head, consumed up to `headOff`) | c1 | c2 ... ]   length = unread bytes in all
 *
 * The queue itself is unbounded; the connection bounds it by pausing the socket while it cannot
 * make progress (output backpressure), so it holds at most one request plus one socket read.
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private headOff = 0;
  /** Unread bytes. */
  length = 0;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /**
   * Consumes n bytes (n <= length) and returns them: a view of the head chunk when contiguous,
   * otherwise a copy into `scratch` (if it is large enough) or into a new buffer of exactly n.
   * A returned view is only valid until the caller next consumes into `scratch`.
   */
  take(n: number, scratch?: Buffer): Buffer {
    if (n > this.length) throw new RangeError(`ByteQueue.take(${n}) with ${this.length} queued`);
    const head = this.chunks[0];
    if (n === 0) return Buffer.alloc(0);
    if (head !== undefined && head.length - this.headOff >= n) {
      const v = head.subarray(this.headOff, this.headOff + n);
      this.advanceHead(n);
      return v;
    }
    const out = scratch !== undefined && scratch.length >= n ? scratch.subarray(0, n) : Buffer.allocUnsafe(n);
    this.copyOut(out, n);
    return out;
  }

  /** Consumes n bytes (n <= length) into dst[0, n). */
  copyOut(dst: Uint8Array, n: number): void {
    let pos = 0;
    while (pos < n) {
      const head = this.chunks[0]!;
      const avail = head.length - this.headOff;
      const k = Math.min(avail, n - pos);
      dst.set(head.subarray(this.headOff, this.headOff + k), pos);
      pos += k;
      this.advanceHead(k);
    }
  }

  /** Discards up to n bytes; returns how many were discarded. */
  skip(n: number): number {
    let left = Math.min(n, this.length);
    const done = left;
    while (left > 0) {
      const head = this.chunks[0]!;
      const k = Math.min(head.length - this.headOff, left);
      this.advanceHead(k);
      left -= k;
    }
    return done;
  }

  clear(): void {
    this.chunks = [];
    this.headOff = 0;
    this.length = 0;
  }

  private advanceHead(k: number): void {
    this.headOff += k;
    this.length -= k;
    if (this.headOff === this.chunks[0]!.length) {
      this.chunks.shift();
      this.headOff = 0;
    }
  }
}
