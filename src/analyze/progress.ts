/**
 * A one-line progress bar on stderr, only when stderr is a terminal; redrawn at most every
 * 100 ms. The total is an estimate (processes' RssAnon, file sizes), so the bar is capped at 99%
 * until done.
 */
export class Progress {
  private last = 0;
  private readonly on: boolean;
  constructor(private readonly total: number, private readonly sources: number, private readonly out: NodeJS.WriteStream = process.stderr) {
    this.on = out.isTTY === true;
  }

  update(doneBytes: number, sourceIndex: number, label: string): void {
    if (!this.on) return;
    const now = Date.now();
    if (now - this.last < 100) return;
    this.last = now;
    const frac = this.total > 0 ? Math.min(0.99, doneBytes / this.total) : 0;
    const width = 30;
    const fill = Math.round(frac * width);
    const bar = '#'.repeat(fill) + '.'.repeat(width - fill);
    const cols = this.out.columns ?? 100;
    let line = `[${bar}] ${(frac * 100).toFixed(0).padStart(2)}%  ${(doneBytes / 2 ** 20).toFixed(0)} MiB  source ${sourceIndex + 1}/${this.sources}  ${label}`;
    if (line.length > cols - 1) line = line.slice(0, cols - 1);
    this.out.write(`\r${line}\x1b[K`);
  }

  done(): void {
    if (this.on) this.out.write('\r\x1b[K');
  }
}
