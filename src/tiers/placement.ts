/**
 * PlacementTier: two tiers behind one Tier (a remote cluster and a local disk), so the core keeps
 * speaking to one interface. The placement policy routes each append; the location says which
 * tier holds the object, in w0's top bit:
 *
 *   w0 = 0ttttttt…  the first tier's own w0 (< 2^31)     w1 unchanged
 *   w0 = 1ttttttt…  the second tier's w0 | DISK_BIT
 *
 * Policies (`--remote-placement`):
 *   remote-first  the cluster takes every cold object; the disk takes it when the cluster is
 *                 down, failing or full (append 'failed' / 'full'); a 'busy' cluster is waited for.
 *   disk-first    the disk takes cold objects until it is full or failing, then the cluster.
 *
 * Cleaning is the disk's: candidates and clean() go to it, with the owner's locations translated.
 * Invariant: nothing is routed by an `if` on the hot path beyond one bit test per call.
 */
import type { AppendResult, CleanResult, CleaningOwner, Tier, TierStats } from './tier.js';
import type { RemoteTier } from './remote/remote-tier.js';

export type PlacementPolicy = 'remote-first' | 'disk-first';
export const PLACEMENT_POLICIES: readonly PlacementPolicy[] = ['remote-first', 'disk-first'];

const DISK_BIT = 0x80000000;

export class PlacementTier implements Tier {
  readonly name = 'remote+disk';
  lastW0 = 0;
  lastW1 = 0;
  locBuf: Uint8Array = new Uint8Array(0);
  locOff = 0;
  private readonly first: Tier;
  private readonly second: Tier;
  private readonly firstBit: number;
  private readonly secondBit: number;
  private readonly owner: CleaningOwner;
  private outer: CleaningOwner | null = null;

  constructor(readonly remote: RemoteTier, readonly disk: Tier, readonly policy: PlacementPolicy = 'remote-first') {
    const remoteFirst = policy === 'remote-first';
    this.first = remoteFirst ? remote : disk;
    this.second = remoteFirst ? disk : remote;
    this.firstBit = remoteFirst ? 0 : DISK_BIT;
    this.secondBit = remoteFirst ? DISK_BIT : 0;
    this.owner = {
      liveness: (id, w0, w1) => this.outer!.liveness(id, (w0 | DISK_BIT) >>> 0, w1),
      relocated: (id, w0, w1) => this.outer!.relocated(id, (w0 | DISK_BIT) >>> 0, w1),
    };
  }

  private tierOf(w0: number): Tier { return (w0 & DISK_BIT) !== 0 ? this.disk : this.remote; }

  append(id: number, fpLo: number, fpHi: number, codec: number, src: Uint8Array, off: number, len: number): AppendResult {
    const r = this.first.append(id, fpLo, fpHi, codec, src, off, len);
    if (r === 'ok') { this.lastW0 = (this.first.lastW0 | this.firstBit) >>> 0; this.lastW1 = this.first.lastW1; return r; }
    if (r === 'busy') return r;
    const r2 = this.second.append(id, fpLo, fpHi, codec, src, off, len);
    if (r2 === 'ok') { this.lastW0 = (this.second.lastW0 | this.secondBit) >>> 0; this.lastW1 = this.second.lastW1; }
    return r2;
  }

  locateBuffered(w0: number, w1: number): boolean {
    const t = this.tierOf(w0);
    if (!t.locateBuffered(w0 & ~DISK_BIT, w1)) return false;
    this.locBuf = t.locBuf;
    this.locOff = t.locOff;
    return true;
  }

  read(w0: number, w1: number, id: number, len: number, fpLo: number, fpHi: number, dst: Uint8Array, dstOff: number): Promise<void> {
    return this.tierOf(w0).read(w0 & ~DISK_BIT, w1, id, len, fpLo, fpHi, dst, dstOff);
  }

  readSync(w0: number, w1: number, id: number, len: number, fpLo: number, fpHi: number, dst: Uint8Array, dstOff: number): void {
    this.tierOf(w0).readSync(w0 & ~DISK_BIT, w1, id, len, fpLo, fpHi, dst, dstOff);
  }

  pin(w0: number): void { this.tierOf(w0).pin(w0 & ~DISK_BIT); }
  unpin(w0: number): void { this.tierOf(w0).unpin(w0 & ~DISK_BIT); }
  release(w0: number, w1: number, len: number): void { this.tierOf(w0).release(w0 & ~DISK_BIT, w1, len); }

  whenWritable(): Promise<void> {
    return Promise.race([this.remote.whenWritable(), this.disk.whenWritable()]);
  }

  sealOpen(): boolean {
    const a = this.remote.sealOpen();
    return this.disk.sealOpen() || a;
  }

  cleaningCandidates(score: (live: number, used: number, ageSeconds: number) => number, max: number): number[] {
    return this.disk.cleaningCandidates(score, max);
  }

  clean(segment: number, owner: CleaningOwner): Promise<CleanResult> {
    this.outer = owner;
    return this.disk.clean(segment, this.owner);
  }

  needsCleaning(): boolean { return this.disk.needsCleaning(); }

  stats(): TierStats {
    return { ...this.disk.stats(), ...this.remote.remoteStats() };
  }

  corruptForTest(w0: number, w1: number): void {
    this.tierOf(w0).corruptForTest?.(w0 & ~DISK_BIT, w1);
  }

  async close(): Promise<void> {
    await Promise.all([this.remote.close(), this.disk.close()]);
  }
}
