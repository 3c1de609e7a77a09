/**
 * Server counters: one field per outcome and reason, shared by every connection of a server and
 * shown under the same names in /stats (JSON) and /metrics (zdedup_nbd_<name>). Plain numbers in
 * one object: incrementing them costs no allocation.
 *
 * Latency: one fixed-bucket histogram per kind of request, counts in a typed array, so recording a
 * request is a short scan and two additions (no allocation). Service time runs from the moment the
 * request is complete in the parser (header parsed; for a WRITE, its payload received too, so a
 * slow sender does not count as server time) to the moment its reply is queued on the socket.
 *
 *   read_ram   READ answered synchronously (every page in RAM; also its errors)
 *   read_tier  READ whose export call returned a Promise (a page had to come from a lower tier)
 *   write      WRITE and WRITE_ZEROES, synchronous or not
 *   other      FLUSH, TRIM, CACHE, BLOCK_STATUS, and requests refused by validation
 *
 * JSON shape (toJSON().latency.<name>), read by the dashboard and turned into Prometheus histograms:
 *   { buckets: number[]      upper bounds in seconds, ascending (LATENCY_BOUNDS: 10 µs .. 10 s)
 *     counts: number[]       per bucket, NOT cumulative: counts[i] = requests with
 *                            buckets[i-1] < t <= buckets[i]; one more entry than `buckets`, the last
 *                            holding requests slower than the last bound (Prometheus' +Inf)
 *     sum_seconds: number    total service time
 *     count: number }        requests recorded (= the sum of `counts`)
 */
import { CMD_NAMES, ERRNO_NAMES } from './protocol.js';

/** Histogram upper bounds in seconds: 1 / 2.5 / 5 per decade from 10 µs to 10 s. */
export const LATENCY_BOUNDS: readonly number[] = [
  10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
  1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3,
  0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];
const BOUNDS = Float64Array.from(LATENCY_BOUNDS);

/** A fixed-bucket latency histogram (see the file comment for the JSON shape). */
export class LatencyHistogram {
  /** counts[i] for bound i; counts[BOUNDS.length] = slower than the last bound. */
  readonly counts = new Float64Array(BOUNDS.length + 1);
  sum_seconds = 0;
  count = 0;

  /** Records one request that took `seconds`. */
  observe(seconds: number): void {
    let i = 0;
    // Linear from the fast end: RAM hits land in the first few buckets.
    while (i < BOUNDS.length && seconds > BOUNDS[i]!) i++;
    this.counts[i]!++;
    this.sum_seconds += seconds;
    this.count++;
  }

  toJSON(): { buckets: number[]; counts: number[]; sum_seconds: number; count: number } {
    return { buckets: [...LATENCY_BOUNDS], counts: Array.from(this.counts), sum_seconds: this.sum_seconds, count: this.count };
  }
}

export class NbdCounters {
  connections_accepted = 0;    // sockets accepted (all listeners, stdio counts as one)
  connections_active = 0;      // sockets open now
  handshakes_completed = 0;    // connections that entered transmission (GO or EXPORT_NAME)
  handshake_aborted = 0;       // ABORT answered, or closed by the client during the option phase
  options_refused = 0;         // option answered with an error reply (ERR_UNSUP, ERR_INVALID, ...)
  protocol_errors = 0;         // hard disconnects for a protocol violation (bad magic, bad client flags, unknown EXPORT_NAME)
  disconnect_mid_request = 0;  // client closed with a request or option partly sent
  requests_total = 0;          // transmission requests parsed (valid or not)
  request_errors_total = 0;    // requests answered with a non-zero error
  bytes_read = 0;              // payload bytes returned by READ
  bytes_written = 0;           // payload bytes accepted by WRITE
  // Limits (see server.ts "Limits"):
  connections_refused_limit = 0; // closed at accept: --max-connections reached and none still negotiating to evict
  handshake_evicted = 0;       // closed while negotiating, the oldest such, to make room for a new connection at the cap
  handshake_timeouts = 0;      // closed for not entering transmission within the handshake deadline
  idle_timeouts = 0;           // closed with a request partly sent or replies unread, and no progress for the idle timeout
  buffered_bytes = 0;          // gauge: request payloads and READ replies held now, across connections (the buffer budget)
  buffer_waits = 0;            // requests that waited for the buffer budget before being received or answered
  // TLS:
  tls_handshakes = 0;          // TLS sessions established after STARTTLS
  tls_handshake_failed = 0;    // STARTTLS answered but the TLS handshake failed (wrong PSK, untrusted certificate, not TLS)
  tls_refused = 0;             // options answered ERR_TLS_REQD (plaintext client while TLS is required), EXPORT_NAME included
  /** Requests by command type (index = NBD command, last slot = unknown types). */
  readonly requests = new Float64Array(CMD_NAMES.length + 1);
  /** Error replies by wire errno name (EINVAL, ENOSPC, ...). */
  readonly errors: Record<string, number> = {};
  /** Service time per kind of request (see the file comment). */
  readonly latency = {
    read_ram: new LatencyHistogram(),
    read_tier: new LatencyHistogram(),
    write: new LatencyHistogram(),
    other: new LatencyHistogram(),
  } as const;

  countRequest(type: number): void {
    this.requests_total++;
    this.requests[type >= 0 && type < CMD_NAMES.length ? type : CMD_NAMES.length]!++;
  }

  countError(errno: number): void {
    this.request_errors_total++;
    const name = ERRNO_NAMES[errno] ?? `errno_${errno}`;
    this.errors[name] = (this.errors[name] ?? 0) + 1;
  }

  /** Plain object for /stats: scalar counters, requests by command name, errors by errno. */
  toJSON(): Record<string, unknown> {
    const byCmd: Record<string, number> = {};
    for (let i = 0; i < CMD_NAMES.length; i++) byCmd[CMD_NAMES[i]!] = this.requests[i]!;
    byCmd.unknown = this.requests[CMD_NAMES.length]!;
    return {
      connections_accepted: this.connections_accepted,
      connections_active: this.connections_active,
      handshakes_completed: this.handshakes_completed,
      handshake_aborted: this.handshake_aborted,
      options_refused: this.options_refused,
      protocol_errors: this.protocol_errors,
      disconnect_mid_request: this.disconnect_mid_request,
      requests_total: this.requests_total,
      request_errors_total: this.request_errors_total,
      bytes_read: this.bytes_read,
      bytes_written: this.bytes_written,
      connections_refused_limit: this.connections_refused_limit,
      handshake_evicted: this.handshake_evicted,
      handshake_timeouts: this.handshake_timeouts,
      idle_timeouts: this.idle_timeouts,
      buffered_bytes: this.buffered_bytes,
      buffer_waits: this.buffer_waits,
      tls_handshakes: this.tls_handshakes,
      tls_handshake_failed: this.tls_handshake_failed,
      tls_refused: this.tls_refused,
      requests: byCmd,
      errors: { ...this.errors },
      latency: {
        read_ram: this.latency.read_ram.toJSON(),
        read_tier: this.latency.read_tier.toJSON(),
        write: this.latency.write.toJSON(),
        other: this.latency.other.toJSON(),
      },
    };
  }
}
