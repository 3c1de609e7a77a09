/**
 * Public errors (a leaf module: engine, tiers, core and frontends import it; it imports nothing). Every error a caller can provoke with bad input carries a stable `code`
 * (part of the interface: scripts and the NBD layer switch on it). Expected outcomes such as
 * a miss or a rejected store are results, not errors; these classes are for invalid input,
 * corruption and I/O failures.
 */

export type ErrorCode =
  | 'ERR_PAGE_LENGTH'      // page buffer is not exactly pageSize bytes
  | 'ERR_OFFSET_RANGE'     // page offset outside the area
  | 'ERR_UNKNOWN_AREA'     // area id/name not defined
  | 'ERR_AREA_EXISTS'      // area name already defined
  | 'ERR_INVALID_ARGUMENT' // negative, non-integer or otherwise malformed number/option
  | 'ERR_BAD_CODEC'        // codec name not recognised / level out of range
  | 'ERR_NATIVE_LIBRARY'   // liblz4/libzstd/libxxhash could not be loaded
  | 'ERR_DECOMPRESS'       // stored object failed to decompress: corruption, never returned as data
  | 'ERR_CORRUPT'          // an internal consistency check failed
  | 'ERR_IO'               // file or device I/O failed
  | 'ERR_DISK_READ'        // a disk-tier record failed its read, checksum or fingerprint: EIO, never wrong data
  | 'ERR_CLOSED'           // the store (or its disk tier) was closed
  // zdedup swap (src/frontends/swap):
  | 'ERR_NOT_ROOT'         // attaching or detaching swap needs root (swapon, losetup, FUSE mounts)
  | 'ERR_TOOL_MISSING'     // a required host tool is not installed (message says which package has it)
  | 'ERR_NO_ATTACH_PATH'   // neither /dev/nbd* nor /dev/fuse + loop are available
  | 'ERR_ALREADY_ON'       // this socket/export is already attached as swap
  | 'ERR_NOT_ON'           // `swap off` found no record of this socket/export
  | 'ERR_ATTACH_FAILED'    // a step of `swap on` failed; the steps done so far were undone
  | 'ERR_DETACH_FAILED'    // a step of `swap off` failed; the state file is kept so it can be retried
  | 'ERR_CGROUP';          // the memory cgroup could not be found, created or configured

export class ZdedupError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'ZdedupError';
  }
}

/** Throws ERR_INVALID_ARGUMENT unless `v` is a safe non-negative integer. */
export function checkUint(name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw new ZdedupError('ERR_INVALID_ARGUMENT', `${name} must be a non-negative integer, got ${String(v)}`);
  }
  return v;
}

/**
 * Parses a size such as "4096", "64K", "512M", "2G", "1T" (binary units; optional "iB"/"B").
 * Throws ERR_INVALID_ARGUMENT for anything else.
 */
export function parseSize(text: string): number {
  const m = /^\s*(\d+)\s*([kmgtKMGT]?)(i?[bB])?\s*$/.exec(text);
  if (!m) throw new ZdedupError('ERR_INVALID_ARGUMENT', `invalid size "${text}" (expected e.g. 4096, 64K, 512M, 2G)`);
  const mult = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2]!.toLowerCase()]!;
  const v = Number(m[1]) * mult;
  if (!Number.isSafeInteger(v)) throw new ZdedupError('ERR_INVALID_ARGUMENT', `size "${text}" is too large`);
  return v;
}
