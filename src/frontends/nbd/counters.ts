/**
 * Server counters: one field per outcome and reason, shared by every connection of a server and
 * shown under the same names in /stats (JSON) and /metrics (zdedup_nbd_<name>). Plain numbers in
 * one object: incrementing them costs no allocation.
 */
import { CMD_NAMES, ERRNO_NAMES } from './protocol.js';

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
  /** Requests by command type (index = NBD command, last slot = unknown types). */
  readonly requests = new Float64Array(CMD_NAMES.length + 1);
  /** Error replies by wire errno name (EINVAL, ENOSPC, ...). */
  readonly errors: Record<string, number> = {};

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
      requests: byCmd,
      errors: { ...this.errors },
    };
  }
}
