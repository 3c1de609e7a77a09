/**
 * The tier interface: where objects go when they leave the RAM pool (disk segments today; cold
 * RAM groups and a remote tier later). The core (src/core) speaks only to this interface; it owns
 * every policy (what to write back, when to clean, what to promote), a tier owns only its bytes.
 *
 * An object in a tier is addressed by two u32 words chosen by the tier (the disk tier: segment id
 * and byte offset of the record in the segment). The core keeps them in its object table and
 * hands them back; it never interprets them.
 *
 * Rules every implementation keeps:
 * - No call blocks the event loop except the *Sync ones, which exist for the library's
 *   synchronous API and say so.
 * - A read never yields bytes that are not exactly what was appended for that object: any doubt
 *   (I/O error, checksum, a record that is not the expected object) is an ERR_DISK_READ error.
 * - A location stays readable from the moment append() returns 'ok' until release() — and for a
 *   read already started, until that read settles, even if the location is released or cleaned
 *   meanwhile.
 * - Expected outcomes (busy, full, failed) are results; exceptions are for bugs and I/O errors.
 */

/** append()'s outcome. Nothing changes in the tier unless it is 'ok'. */
export type AppendResult =
  | 'ok'      // stored; the location is in lastW0 / lastW1
  | 'busy'    // every write buffer is full or being written: retry after whenWritable()
  | 'full'    // no free space, and cleaning cannot make any until objects are released
  | 'failed'; // the tier is failing writes (I/O errors); it retries in the background

/** Whether a record found by the cleaner is still wanted, as the core decides. */
export type Liveness =
  | 'dead'  // no object points at this record: its space is reclaimed
  | 'move'  // live and only here: copy it forward, then call relocated()
  | 'drop'; // live but also held elsewhere (RAM): the core forgot this copy; reclaim it

/** The core's side of cleaning: liveness of records and the new home of moved ones. */
export interface CleaningOwner {
  liveness(id: number, w0: number, w1: number): Liveness;
  /**
   * Optional: the object now stored at (w0, w1), given the id and fingerprint the record holds,
   * or -1. Durable mode needs it: a restart renumbers objects, so a record's id is only a hint.
   */
  resolve?(id: number, w0: number, w1: number, fpLo: number, fpHi: number): number;
  relocated(id: number, w0: number, w1: number): void;
}

export interface CleanResult {
  /** 'done': the segment is free (or will be once reads on it finish); 'busy': room ran out mid-way, call again later; 'damaged': a record header is unreadable, the segment is left alone. */
  outcome: 'done' | 'busy' | 'damaged' | 'gone';
  moved_records: number;
  moved_bytes: number;
}

/** The remote tier's counters (src/tiers/remote); zero for a store without one. */
export interface RemoteStats {
  /** Objects of this host located in the remote tier (acknowledged or still in a write buffer), and their stored bytes. */
  remote_objects: number;
  remote_bytes: number;
  /** Values uploaded to the cluster (the content was not there yet). */
  remote_stores: number;
  /** Objects read back from the cluster. */
  remote_loads: number;
  /** Objects whose content the cluster already held (stored by another host of the domain, or earlier): upload skipped. */
  remote_dedup_hits: number;
  /** Failed cluster operations: unacknowledged or failed batches, unreachable or bad reads, lost keys. */
  remote_errors: number;
  /** Batches and reads tried again after a failure. */
  remote_retries: number;
  /** Objects whose key the cluster no longer had when read or renewed (each load of one is an EIO). */
  remote_lost_objects: number;
  /** Bytes of values and keys sent to / received from the cluster. */
  remote_bytes_sent: number;
  remote_bytes_received: number;
  /** Latency of loads served by the cluster (remote hits), over the last 4096: median and 99th percentile, µs. */
  remote_hit_latency_p50_us: number;
  remote_hit_latency_p99_us: number;
}

export const NO_REMOTE_STATS: Readonly<RemoteStats> = {
  remote_objects: 0, remote_bytes: 0, remote_stores: 0, remote_loads: 0, remote_dedup_hits: 0, remote_errors: 0,
  remote_retries: 0, remote_lost_objects: 0, remote_bytes_sent: 0, remote_bytes_received: 0,
  remote_hit_latency_p50_us: 0, remote_hit_latency_p99_us: 0,
};

/** Counters and sizes of a tier, under the names /stats shows (PageStoreStats includes them). */
export interface TierStats extends RemoteStats {
  /** Size of the backing file or device (0 without a disk tier). */
  backing_size: number;
  /** Bytes of the backing occupied by segments in use (sealed or being filled), and the live part. */
  disk_bytes: number;
  disk_live_bytes: number;
  /** Segments in use, and free. */
  disk_segments: number;
  disk_free_segments: number;
  /** Bytes written to the backing (segments, aligned). */
  disk_bytes_written: number;
  /** Bytes of records appended for new data (writeback, writethrough, bypass): write_amplification's denominator. */
  disk_record_bytes_appended: number;
  /** Bytes of live records the cleaner copied forward. */
  disk_cleaner_bytes_moved: number;
  /** Reads issued to the backing (loads, cold duplicate checks). */
  disk_reads: number;
  /** Bytes written to the backing per byte of new data in the segments written so far (the one
   *  still filling in RAM counts once it is written); cleaning, headers and padding make it > 1. */
  write_amplification: number;
  /** Segments freed by the cleaner. */
  cleaned_segments: number;
  /** Failed writes of segments (each is retried; appends are refused meanwhile). */
  disk_write_errors: number;
  /** Tier reads that failed: I/O error, bad checksum or wrong record (each is an EIO, never data). */
  disk_read_errors: number;
}

/** What stats() of a store without a tier reports for the tier fields. */
export const NO_TIER_STATS: Readonly<TierStats> = {
  backing_size: 0, disk_bytes: 0, disk_live_bytes: 0, disk_segments: 0, disk_free_segments: 0, disk_bytes_written: 0,
  disk_record_bytes_appended: 0, disk_cleaner_bytes_moved: 0, disk_reads: 0, write_amplification: 1,
  cleaned_segments: 0, disk_write_errors: 0, disk_read_errors: 0, ...NO_REMOTE_STATS,
};

export interface Tier {
  readonly name: string;
  /** Location of the last successful append (valid until the next append). */
  lastW0: number;
  lastW1: number;

  /**
   * Copies one object's stored bytes (src[off, off+len)) into the tier with the object's id and
   * fingerprint, and `codec` (0 raw, 1 lz4, 2 zstd) for offline tools. Does no I/O itself: the
   * bytes go into a write buffer that is written in the background; the record can be read at
   * once. Never throws for a full or failing tier: see AppendResult. `serial`: the object's
   * serial in durable mode (recorded with it), else 0.
   */
  append(id: number, fpLo: number, fpHi: number, codec: number, src: Uint8Array, off: number, len: number, serial?: number): AppendResult;

  /**
   * When the record at (w0, w1) still sits in a RAM write buffer, sets locBuf / locOff to its
   * payload and returns true; else false. Never does I/O. Valid until the next tier call.
   */
  locateBuffered(w0: number, w1: number): boolean;
  locBuf: Uint8Array;
  locOff: number;

  /**
   * Reads the record at (w0, w1), checks it is object `id` with `len` payload bytes and this
   * fingerprint and that its checksum holds, and copies the payload to dst[dstOff, dstOff+len).
   * Rejects with ZdedupError ERR_DISK_READ otherwise (counted in disk_read_errors).
   */
  read(w0: number, w1: number, id: number, len: number, fpLo: number, fpHi: number, dst: Uint8Array, dstOff: number): Promise<void>;

  /** read(), blocking the thread: for the library's synchronous load/store calls only. A tier
   *  that cannot read without the event loop (remote) throws ERR_DISK_READ: an EIO, never data. */
  readSync(w0: number, w1: number, id: number, len: number, fpLo: number, fpHi: number, dst: Uint8Array, dstOff: number): void;

  /**
   * Keeps location w0's space from being reused until unpin(w0), even if its records are
   * released or cleaned meanwhile (a read queued behind others pins it when it is planned).
   */
  pin(w0: number): void;
  unpin(w0: number): void;

  /** No object refers to the record at (w0, w1) of `len` payload bytes any more. */
  release(w0: number, w1: number, len: number): void;

  /** Resolves once append() may succeed again (a buffer was written, space was freed, or the tier recovered). */
  whenWritable(): Promise<void>;

  /** Writes the partly filled write buffer now (for FLUSH in a durable mode); returns false when there was nothing to write. */
  sealOpen(): boolean;

  /** Segments that can be cleaned, best first by the caller's score; see DiskTier for the data. */
  cleaningCandidates(score: (live: number, used: number, ageSeconds: number) => number, max: number): number[];

  /** Cleans one segment: reads it, asks the owner about each record, copies live ones forward. */
  clean(segment: number, owner: CleaningOwner): Promise<CleanResult>;

  /** True when free segments are few enough that the cleaner should run. */
  needsCleaning(): boolean;

  stats(): TierStats;

  /** Test hook: flips a byte of the payload of the record at (w0, w1) on the medium. */
  corruptForTest?(w0: number, w1: number): void;

  /** Waits for writes under way, then closes the medium. Further calls fail with ERR_CLOSED. */
  close(): Promise<void>;
}
