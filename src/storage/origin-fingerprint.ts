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
 *   device, our own close included) is counted as a write I/O of zero sectors. For a
 *   partition the whole disk's counters are taken too (a write through the whole disk
 *   is counted there only). For a loop device, its backing file's fingerprint as an
 *   image file (a write straight into the backing file bypasses the loop device's
 *   counters).
 * - A block device's identity, for `cbt_trust` (which resumes across reboots, when the
 *   device's numbers and counters start again): the disk's WWID or serial where the
 *   kernel has one (a partition adds its number and start), a loop device's backing
 *   file (device, inode, offset, size limit). Null where the kernel has none.
 *
 * A part that cannot be read proves nothing: it is named in `unknown`, and the resume
 * decision (cbt-continuity.ts) treats any unknown part as a doubt. So do counters with
 * the device's I/O statistics off (`queue/iostats` 0: they stand still whatever is
 * written), and a loop device whose backing file cannot be looked at, or whose path now
 * names another file than the one the loop device reads.
 *
 * Taken with the origin held open: at mount before the first write, and at shutdown
 * after the last write and the final datasync.
 */
import { promises as fsp, type BigIntStats } from 'node:fs';
import type { OriginDevice, OriginKind } from './origin-device.js';
import { majorMinor } from './devnum.js';
import { errnoNameOf } from '../errors.js';

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
  /** Block device that is a loop device: its backing file (null when not one, or unknown). */
  backingFile: FileFingerprint | null;
  /**
   * Block device: which disk it is (WWID, serial, a loop device's backing file), or null
   * when the kernel knows none. Absent in states saved before it was kept.
   */
  identity?: string | null;
  /**
   * The parts that could not be read, each as a phrase ("the write counters: ..."):
   * they prove nothing. Absent in states saved before it was kept.
   */
  unknown?: string[];
}

export function fileFingerprint(st: BigIntStats): FileFingerprint {
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

/** Sectors written and discarded since the device appeared (fields 7 and 14 of its stat file). */
export interface SectorCounters {
  written: number;
  discarded: number;
}

function parseStat(stat: string | null): SectorCounters | null {
  if (stat === null) return null;
  const f = stat.split(/\s+/);
  const written = Number(f[6]);
  const discarded = Number(f[13] ?? '0');
  if (f.length < 7 || !Number.isSafeInteger(written) || !Number.isSafeInteger(discarded)) return null;
  return { written, discarded };
}

/** The sysfs directory of the whole disk a device belongs to (itself unless a partition). */
async function diskDir(rdev: string): Promise<{ dir: string; partition: string | null }> {
  const base = `/sys/dev/block/${rdev}`;
  const partition = await readText(`${base}/partition`);
  return { dir: partition === null ? base : `${base}/..`, partition };
}

/** Whether the kernel keeps I/O statistics for the device: null when it cannot be told. */
async function iostatsOn(rdev: string): Promise<boolean | null> {
  const { dir } = await diskDir(rdev);
  const v = await readText(`${dir}/queue/iostats`);
  return v === null ? null : v !== '0';
}

/**
 * The device's own counters (a partition's, not its disk's), or null when they prove
 * nothing: unreadable, or I/O statistics off.
 */
export async function sectorCounters(rdev: string): Promise<SectorCounters | null> {
  if ((await iostatsOn(rdev)) !== true) return null;
  return parseStat(await readText(`/sys/dev/block/${rdev}/stat`));
}

async function writeCounters(rdev: string, unknown: string[]): Promise<string | null> {
  const stats = await iostatsOn(rdev);
  if (stats !== true) {
    unknown.push(stats === false ? 'the write counters: the I/O statistics are off (queue/iostats is 0)' : 'the write counters: queue/iostats cannot be read');
    return null;
  }
  const own = parseStat(await readText(`/sys/dev/block/${rdev}/stat`));
  const { partition } = await diskDir(rdev);
  const whole = partition === null ? null : parseStat(await readText(`/sys/dev/block/${rdev}/../stat`));
  if (own === null || (partition !== null && whole === null)) {
    unknown.push('the write counters: the stat file cannot be read');
    return null;
  }
  const text = (c: SectorCounters): string => `${c.written},${c.discarded}`;
  return whole === null ? text(own) : `${text(own)};${text(whole)}`;
}

/** The first identity the kernel gives the whole disk, labelled by kind. */
async function diskIdentity(rdev: string): Promise<string | null> {
  const { dir, partition } = await diskDir(rdev);
  const sources: Array<[string, string]> = [
    ['wwid', 'wwid'], ['wwid', 'device/wwid'], ['serial', 'serial'], ['serial', 'device/serial'], ['dm-uuid', 'dm/uuid'], ['md-uuid', 'md/uuid'],
  ];
  for (const [label, rel] of sources) {
    const v = await readText(`${dir}/${rel}`);
    if (v !== null && v.length > 0) {
      return partition === null ? `${label}:${v}` : `${label}:${v} partition ${partition} start ${(await readText(`/sys/dev/block/${rdev}/start`)) ?? '?'}`;
    }
  }
  return null;
}

interface LoopFacts {
  identity: string;
  backingFile: FileFingerprint | null;
}

/**
 * A loop device's backing file: its identity from the kernel (LOOP_GET_STATUS64 gives
 * device and inode even when the file was deleted or renamed), and its fingerprint by
 * path, taken only when the path still names that very file. null when not a loop device.
 */
async function loopFacts(origin: OriginDevice, rdev: string, unknown: string[]): Promise<LoopFacts | null> {
  const { dir } = await diskDir(rdev);
  const path = await readText(`${dir}/loop/backing_file`);
  if (path === null) return null;
  const backing = await origin.loopBacking();
  const offset = (await readText(`${dir}/loop/offset`)) ?? '?';
  const limit = (await readText(`${dir}/loop/sizelimit`)) ?? '?';
  if (backing === null) {
    unknown.push("the loop device's backing file: LOOP_GET_STATUS64 failed");
    return { identity: `loop:? ${path}`, backingFile: null };
  }
  const identity = `loop:${majorMinor(backing.dev)}:${backing.ino} offset ${offset} sizelimit ${limit}`;
  let st: BigIntStats;
  try {
    st = await fsp.stat(path.replace(/ \(deleted\)$/, ''), { bigint: true });
  } catch (err) {
    unknown.push(`the loop device's backing file: ${path} cannot be looked at (${errnoNameOf(err)})`);
    return { identity, backingFile: null };
  }
  if (majorMinor(Number(st.dev)) !== majorMinor(backing.dev) || Number(st.ino) !== backing.ino) {
    unknown.push(`the loop device's backing file: ${path} now names another file than the one the device reads`);
    return { identity, backingFile: null };
  }
  return { identity, backingFile: fileFingerprint(st) };
}

export async function fingerprintOrigin(origin: OriginDevice): Promise<OriginFingerprint> {
  const id = origin.identity;
  if (id.kind === 'file') {
    const st = await origin.statNs();
    return {
      kind: 'file', size: Number(st.size), file: fileFingerprint(st), rdev: null, diskseq: null, bootId: null, writeCounters: null,
      backingFile: null, identity: null, unknown: [],
    };
  }
  const rdev = id.rdev ?? '';
  const unknown: string[] = [];
  const loop = await loopFacts(origin, rdev, unknown);
  return {
    kind: 'block-device',
    size: id.size,
    file: null,
    rdev,
    diskseq: id.diskseq,
    bootId: await readText('/proc/sys/kernel/random/boot_id'),
    writeCounters: await writeCounters(rdev, unknown),
    backingFile: loop?.backingFile ?? null,
    identity: loop?.identity ?? (await diskIdentity(rdev)),
    unknown,
  };
}

/** The newest of the fingerprint's file times, in milliseconds (null for none). */
export function newestFileTimeMs(fp: OriginFingerprint): number | null {
  const f = fp.file ?? fp.backingFile;
  if (f === null || f.mtimeNs === '?') return null;
  const newest = BigInt(f.mtimeNs) > BigInt(f.ctimeNs) ? BigInt(f.mtimeNs) : BigInt(f.ctimeNs);
  return Number(newest / 1_000_000n);
}
