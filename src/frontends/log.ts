/**
 * Structured logs: one JSON object per line on stderr (stdout may carry NBD in --stdio mode, so
 * logs never go there). Fields: ts (ISO time), level, msg, then the caller's fields.
 *
 * Levels are ordered error < warn < info < debug. A disabled level costs one integer compare:
 * hot paths test `log.debugEnabled` before building the fields object at all.
 */

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';

const RANK: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };

export type LogFields = Record<string, unknown>;

export interface LogSink { write(line: string): unknown }

export function isLogLevel(s: string): s is LogLevel {
  return Object.prototype.hasOwnProperty.call(RANK, s);
}

export class Logger {
  private readonly rank: number;
  /** True when debug lines are written; check it before building per-request fields. */
  readonly debugEnabled: boolean;

  constructor(
    readonly level: LogLevel = 'info',
    private readonly sink: LogSink = process.stderr,
    /** Fields added to every line (e.g. a connection id); see child(). */
    private readonly base: LogFields = {},
  ) {
    this.rank = RANK[level];
    this.debugEnabled = this.rank >= RANK.debug;
  }

  /** A logger that adds `fields` to every line it writes. */
  child(fields: LogFields): Logger {
    return new Logger(this.level, this.sink, { ...this.base, ...fields });
  }

  error(msg: string, fields?: LogFields): void { this.emit(0, 'error', msg, fields); }
  warn(msg: string, fields?: LogFields): void { this.emit(1, 'warn', msg, fields); }
  info(msg: string, fields?: LogFields): void { this.emit(2, 'info', msg, fields); }
  debug(msg: string, fields?: LogFields): void { this.emit(3, 'debug', msg, fields); }

  private emit(rank: number, level: LogLevel, msg: string, fields?: LogFields): void {
    if (rank > this.rank) return;
    const rec: LogFields = { ts: new Date().toISOString(), level, msg, ...this.base, ...fields };
    let line: string;
    try {
      line = JSON.stringify(rec, replacer);
    } catch {
      line = JSON.stringify({ ts: rec.ts, level, msg, note: 'fields not serialisable' });
    }
    this.sink.write(line + '\n');
  }
}

/** Errors become {name, code, message}; bigints become numbers or strings. */
function replacer(_key: string, v: unknown): unknown {
  if (v instanceof Error) {
    const code = (v as { code?: unknown }).code;
    return { name: v.name, ...(code !== undefined ? { code } : {}), message: v.message };
  }
  if (typeof v === 'bigint') return Number.isSafeInteger(Number(v)) ? Number(v) : v.toString();
  return v;
}

/** A logger that writes nothing (tests, library use). */
export const silentLogger = new Logger('error', { write: () => true });

/**
 * Rate-limited warnings for events a client can cause at will (refused connections, timeouts):
 * at most `burst` lines per key per `windowMs`; the lines left out are counted and their number
 * is reported as `suppressed` on the next line of that key that is written.
 */
export class RateLimitedLog {
  private readonly windows = new Map<string, { start: number; lines: number; suppressed: number }>();

  constructor(private readonly log: Logger, private readonly burst = 10, private readonly windowMs = 60_000) {}

  warn(key: string, msg: string, fields?: LogFields, now = Date.now()): void {
    let w = this.windows.get(key);
    if (w === undefined || now - w.start >= this.windowMs) {
      const suppressed = w?.suppressed ?? 0;
      w = { start: now, lines: 0, suppressed: 0 };
      this.windows.set(key, w);
      if (suppressed > 0) fields = { ...fields, suppressed };
    }
    if (w.lines >= this.burst) {
      w.suppressed++;
      return;
    }
    w.lines++;
    this.log.warn(msg, fields);
  }
}
