/**
 * Durable mode's facade for the page store (PageStore option `persist`): the persisted
 * configuration (page size, codec, dedup domains, areas with their sizes) in the backing's file
 * header, recovery at start (recovery.ts), and the journal (journal.ts) that FLUSH drains.
 *
 * The configuration is JSON in the file header (docs/FORMAT.md), rewritten (one 4 KiB write +
 * fdatasync) when an area is defined or grows. A restart must agree with it: another page size,
 * codec or dedup setting is refused (ERR_INVALID_ARGUMENT: exit 2 in the CLI); areas keep their
 * sizes (the frontend refuses to shrink an export; growing is allowed).
 */
import { ZdedupError } from '../../errors.js';
import type { DiskTier } from '../../tiers/disk/disk-tier.js';
import { Journal, type JournalHost } from './journal.js';
import { recoverStore, type RecoveryReport, type RestoreHost } from './recovery.js';

export interface PersistedArea {
  name: string;
  pages: number;
  /** Opaque to the store: what the frontend keeps with the area (the NBD export's byte size). */
  meta?: string;
}

export interface PersistedConfig {
  v: 1;
  pageSize: number;
  codec: string;
  sharedDedup: boolean;
  areas: PersistedArea[];
}

export interface DurableHost extends JournalHost, RestoreHost {
  /** Defines a persisted area at start (before recovery applies slots). */
  defineArea(a: PersistedArea): void;
}

export interface DurableOptions {
  checkpointBytes?: number;
  checkpointDataBytes?: number;
  /** fsck --repair: drop journal records whose pages cannot be told instead of refusing to start. */
  acceptLoss?: boolean;
  /** fsck: read every segment at recovery, even those a checkpoint covers (finds damage in them too). */
  scanAll?: boolean;
  events?: (level: 'info' | 'warn' | 'error', msg: string, fields: Record<string, unknown>) => void;
}

/** The configuration a new durable backing starts with. */
export function initialConfig(pageSize: number, codec: string, sharedDedup: boolean): Buffer {
  const c: PersistedConfig = { v: 1, pageSize, codec, sharedDedup, areas: [] };
  return Buffer.from(JSON.stringify(c));
}

export class Durable {
  readonly journal: Journal;
  /** What recovery found (null for a new backing). */
  readonly report: RecoveryReport | null = null;
  /** Next object serial. */
  serial = 1;
  private readonly config: PersistedConfig;

  constructor(private readonly tier: DiskTier, host: DurableHost, pageSize: number, codec: string, sharedDedup: boolean, o: DurableOptions = {}) {
    const events = o.events ?? (() => {});
    const h = tier.foundHeader;
    if (h === null) {
      this.config = JSON.parse(initialConfig(pageSize, codec, sharedDedup).toString()) as PersistedConfig;
      this.journal = new Journal(tier, host, { checkpointBytes: o.checkpointBytes, checkpointDataBytes: o.checkpointDataBytes, events });
      return;
    }
    let cfg: PersistedConfig;
    try {
      cfg = JSON.parse(h.config!.toString('utf8')) as PersistedConfig;
    } catch {
      throw new ZdedupError('ERR_CORRUPT', `backing ${tier.path}: the persisted configuration is not valid JSON`);
    }
    const differs = (what: string, held: unknown, given: unknown): ZdedupError =>
      new ZdedupError('ERR_INVALID_ARGUMENT', `backing ${tier.path} holds a store with ${what} ${String(held)}; this start asks for ${String(given)} (use the same setting, or another backing)`);
    if (h.pageSize !== pageSize || cfg.pageSize !== pageSize) throw differs('page size', h.pageSize, pageSize);
    if (cfg.codec !== codec) throw differs('codec', cfg.codec, codec);
    if (cfg.sharedDedup !== sharedDedup) throw differs('shared dedup', cfg.sharedDedup, sharedDedup);
    this.config = cfg;
    for (const a of cfg.areas) host.defineArea(a);
    const r = recoverStore(tier, h, cfg.areas.length, host, o.acceptLoss === true, o.scanAll === true);
    this.report = r;
    this.serial = r.serial + 1;
    this.journal = new Journal(tier, host, { checkpointBytes: o.checkpointBytes, checkpointDataBytes: o.checkpointDataBytes, seq: r.seq, gen: r.gen, events });
    const fields = {
      path: tier.path, recovery_seconds: Number(r.recovery_seconds.toFixed(3)), recovered_pages: r.recovered_pages,
      recovery_discarded_bytes: r.recovery_discarded_bytes, recovery_lost_pages: r.recovery_lost_pages,
      recovery_damaged_records: r.recovery_damaged_records, records: r.records, bytes_read: r.bytes_read,
      checkpoint_generation: r.checkpoint_generation, journal_records_replayed: r.journal_records_replayed,
    };
    events(r.recovery_damaged_records > 0 || r.recovery_lost_pages > 0 ? 'error' : 'info', 'recovered the store from the backing', fields);
    for (const d of r.damage.slice(0, 20)) {
      events('error', 'damaged record in the log: the pages that need it read as EIO (zdedup fsck lists all)', { path: tier.path, segment: d.seg, offset: d.off, bytes: d.bytes, why: d.why });
    }
  }

  /** The persisted definition of area `name`, if any. */
  area(name: string): PersistedArea | undefined {
    return this.config.areas.find((a) => a.name === name);
  }

  /** Records a new area, or a new size or meta of an existing one, in the file header. */
  defineArea(name: string, pages: number, meta: string | undefined): void {
    const cur = this.area(name);
    if (cur !== undefined) {
      if (cur.pages === pages && cur.meta === meta) return;
      cur.pages = pages;
      cur.meta = meta;
    } else {
      this.config.areas.push(meta !== undefined ? { name, pages, meta } : { name, pages });
    }
    this.tier.writeHeader(this.config.pageSize, Buffer.from(JSON.stringify(this.config)));
  }
}
