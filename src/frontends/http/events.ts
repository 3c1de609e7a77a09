/**
 * /events: the /stats document pushed as server-sent events, one `data:` frame per interval
 * (1 s by default) to every subscriber, and one at once on connect so a page has numbers before
 * its first tick. Each frame is the /stats document plus `time_ms` (server clock, for rates).
 *
 * Costs nothing when nobody watches: the timer runs only while there is a subscriber, and one
 * snapshot per tick is shared by all of them (serialised once).
 *
 * Bounded: at most `maxClients` subscribers (more get 503), and a subscriber whose socket is not
 * draining (write() returned false, still pending) skips frames instead of queueing them: a
 * stalled browser tab never grows the server's memory. Skipped frames are counted.
 */
import type http from 'node:http';

export interface EventsOptions {
  /** Milliseconds between frames. */
  intervalMs: number;
  /** Subscribers allowed at once. */
  maxClients: number;
  /** The document to send (called once per tick). */
  snapshot: () => unknown;
}

export class StatsEvents {
  private readonly clients = new Set<http.ServerResponse>();
  private timer: NodeJS.Timeout | undefined;
  /** Frames not sent because the subscriber's socket was still full. */
  skippedFrames = 0;

  constructor(private readonly o: EventsOptions) {}

  get subscribers(): number {
    return this.clients.size;
  }

  /** Takes over a GET /events response. */
  subscribe(req: http.IncomingMessage, res: http.ServerResponse): void {
    if (this.clients.size >= this.o.maxClients) {
      res.writeHead(503, { 'content-type': 'text/plain', 'retry-after': '5' }).end('too many /events subscribers\n');
      return;
    }
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      'x-content-type-options': 'nosniff',
      connection: 'keep-alive',
    });
    // The browser reconnects on its own after this many ms if the stream drops.
    res.write(`retry: ${Math.max(1000, this.o.intervalMs * 2)}\n\n`);
    this.clients.add(res);
    const drop = (): void => { this.clients.delete(res); if (this.clients.size === 0) this.stop(); };
    req.on('close', drop);
    res.on('error', drop);
    res.write(this.frame());
    if (this.timer === undefined) {
      this.timer = setInterval(() => this.tick(), this.o.intervalMs);
      this.timer.unref();
    }
  }

  /** Ends every stream (server shutdown). */
  close(): void {
    for (const res of this.clients) res.end();
    this.clients.clear();
    this.stop();
  }

  private tick(): void {
    const frame = this.frame();
    for (const res of this.clients) {
      if (res.writableNeedDrain) { this.skippedFrames++; continue; }
      res.write(frame);
    }
  }

  private frame(): string {
    const doc = { ...(this.o.snapshot() as object), time_ms: Date.now() };
    return `data: ${JSON.stringify(doc)}\n\n`;
  }

  private stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }
}
