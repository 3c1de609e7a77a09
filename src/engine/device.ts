/** Sizes of files and block devices (shared by the analyzer and the disk tier). */
import { fstatSync, readFileSync } from 'node:fs';

/** Size of an open regular file or block device in bytes, 0 if unknown (pipes, character devices). */
export function deviceOrFileSize(fd: number): number {
  const st = fstatSync(fd);
  if (st.isFile()) return st.size;
  if (st.isBlockDevice()) {
    // st_size is 0 for block devices: the size is in sysfs, in 512-byte sectors.
    // glibc's dev_t layout: major = bits 8..19 and 32..43, minor = bits 0..7 and 20..31.
    const d = st.rdev;
    const maj = (Math.floor(d / 256) & 0xfff) | (Math.floor(d / 2 ** 32) & 0xfffff000);
    const min = (d & 0xff) | (Math.floor(d / 4096) & 0xffffff00);
    try { return Number(readFileSync(`/sys/dev/block/${maj}:${min}/size`, 'utf8').trim()) * 512; } catch { return 0; }
  }
  return 0;
}
