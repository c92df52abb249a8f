/**
 * What says that an origin is the same and unchanged since change tracking was saved.
 *
 * - An image file: device and inode (the same file), size, and mtime and ctime in
 *   nanoseconds. Any write, truncate or chmod changes ctime, and ctime cannot be set
 *   back, so a restore with preserved mtime is noticed too.
 * - A block device: size, the boot (/proc/sys/kernel/random/boot_id), the kernel's
 *   disk sequence number (new at every attach of a loop device, every hot-plug), and
 *   its counters of sectors written and discarded (/sys/dev/block/M:m/stat), which only
 *   count up while the boot lasts. Sectors, not I/Os: a cache flush (every fsync of the
 *   device, our own close included) is counted as a write I/O of zero sectors. For a partition the whole disk's counters are taken too (a write
 *   through the whole disk is counted there only). For a loop device, its backing
 *   file's fingerprint as an image file (a write straight into the backing file
 *   bypasses the loop device's counters).
 *
 * Taken with the origin held open: at mount before the first write, and at shutdown
 * after the last write and the final datasync.
 */
import { promises as fsp, type BigIntStats } from 'node:fs';
import type { OriginDevice, OriginKind } from './origin-device.js';
import { majorMinor } from './devnum.js';

export interface FileFingerprint {
  dev: string;
  ino: string;
  size: number;
  mtimeNs: string;
  ctimeNs: string;
}

export interface OriginFingerprint {
  kind: OriginKind;
  size: number;
  /** The image file itself (kind "file"), or null. */
  file: FileFingerprint | null;
  /** Block device: its major:minor, diskseq, boot and write counters (null where unknown). */
  rdev: string | null;
  diskseq: number | null;
  bootId: string | null;
  writeCounters: string | null;
  /** Block device that is a loop device: its backing file. */
  backingFile: FileFingerprint | null;
}

function fileFingerprint(st: BigIntStats): FileFingerprint {
  return {
    dev: majorMinor(Number(st.dev)),
    ino: st.ino.toString(),
    size: Number(st.size),
    mtimeNs: st.mtimeNs.toString(),
    ctimeNs: st.ctimeNs.toString(),
  };
}

async function readText(path: string): Promise<string | null> {
  try {
    return (await fsp.readFile(path, 'utf8')).trim();
  } catch {
    return null;
  }
}

/** Fields 7 and 14 of the stat file: sectors written, sectors discarded. */
function dataChangingCounters(stat: string | null): string | null {
  if (stat === null) return null;
  const f = stat.split(/\s+/);
  if (f.length < 7) return null;
  return [f[6], f[13] ?? '0'].join(',');
}

async function writeCounters(rdev: string): Promise<string | null> {
  const own = dataChangingCounters(await readText(`/sys/dev/block/${rdev}/stat`));
  if (own === null) return null;
  if ((await readText(`/sys/dev/block/${rdev}/partition`)) === null) return own;
  const whole = dataChangingCounters(await readText(`/sys/dev/block/${rdev}/../stat`));
  return whole === null ? null : `${own};${whole}`;
}

async function backingFile(rdev: string): Promise<FileFingerprint | null> {
  const path = await readText(`/sys/dev/block/${rdev}/loop/backing_file`);
  if (path === null) return null;
  const st = await fsp.stat(path.replace(/ \(deleted\)$/, ''), { bigint: true }).catch(() => null);
  // A loop device whose backing file cannot be looked at cannot be vouched for.
  return st === null ? { dev: '?', ino: '?', size: -1, mtimeNs: '?', ctimeNs: '?' } : fileFingerprint(st);
}

export async function fingerprintOrigin(origin: OriginDevice): Promise<OriginFingerprint> {
  const id = origin.identity;
  if (id.kind === 'file') {
    const st = await origin.statNs();
    return { kind: 'file', size: Number(st.size), file: fileFingerprint(st), rdev: null, diskseq: null, bootId: null, writeCounters: null, backingFile: null };
  }
  const rdev = id.rdev ?? '';
  return {
    kind: 'block-device',
    size: id.size,
    file: null,
    rdev,
    diskseq: id.diskseq,
    bootId: await readText('/proc/sys/kernel/random/boot_id'),
    writeCounters: await writeCounters(rdev),
    backingFile: await backingFile(rdev),
  };
}

/** The newest of the fingerprint's file times, in milliseconds (null for none). */
export function newestFileTimeMs(fp: OriginFingerprint): number | null {
  const f = fp.file ?? fp.backingFile;
  if (f === null || f.mtimeNs === '?') return null;
  const newest = BigInt(f.mtimeNs) > BigInt(f.ctimeNs) ? BigInt(f.mtimeNs) : BigInt(f.ctimeNs);
  return Number(newest / 1_000_000n);
}
