/**
 * Where a difference-storage file may live. The daemon must never do I/O to anything
 * backed by its own mount (a synchronous write into our own FUSE file system, or to a
 * loop device over it, freezes the mount), nor put the copies of the origin onto the
 * origin itself.
 *
 * Refused, each with its errno (nothing is opened or created before these checks):
 * - a path inside the mount point (EINVAL), checked on the path as written first, so
 *   the daemon does not even look it up through its own mount;
 * - the origin file itself, by inode, whatever the path (EINVAL);
 * - a file system on the origin device, on a partition of it, or on a loop device
 *   whose backing file is the origin, lives on such a device, or lies inside the mount
 *   (EXDEV) -- followed through loop devices stacked on loop devices.
 */
import { promises as fsp, type Stats } from 'node:fs';
import { dirname, resolve, sep } from 'node:path';
import { BlksnapError, asBlksnapError } from '../errors.js';
import type { OriginIdentity } from './origin-device.js';
import { majorMinor } from './devnum.js';

function inside(path: string, dir: string): boolean {
  return path === dir || path.startsWith(dir.endsWith(sep) ? dir : dir + sep);
}

async function readSys(path: string): Promise<string | null> {
  try {
    return (await fsp.readFile(path, 'utf8')).trim();
  } catch {
    return null;
  }
}

/** The whole disk a partition belongs to ("8:0" for "8:1"); the device itself otherwise. */
async function wholeDisk(dev: string): Promise<string> {
  if ((await readSys(`/sys/dev/block/${dev}/partition`)) === null) return dev;
  return (await readSys(`/sys/dev/block/${dev}/../dev`)) ?? dev;
}

interface LoopDevice {
  dev: string;
  backing: string;
}

async function loopDevices(): Promise<LoopDevice[]> {
  const names = await fsp.readdir('/sys/block').catch(() => [] as string[]);
  const found: LoopDevice[] = [];
  for (const name of names.filter((n) => n.startsWith('loop'))) {
    const backing = await readSys(`/sys/block/${name}/loop/backing_file`);
    const dev = await readSys(`/sys/block/${name}/dev`);
    if (backing !== null && dev !== null) found.push({ dev, backing: backing.replace(/ \(deleted\)$/, '') });
  }
  return found;
}

/**
 * major:minor of every block device whose data is the origin's or passes through the
 * mount: the origin device and loop devices over the origin, over a file in the mount,
 * or over a file or device that is itself such a device (to a fixed point).
 */
async function forbiddenDevices(origin: OriginIdentity, realMount: string): Promise<Set<string>> {
  const forbidden = new Set<string>();
  if (origin.rdev !== null) forbidden.add(origin.rdev);
  const loops = await loopDevices();
  const backing = new Map<string, Stats | null>();
  for (const loop of loops) {
    // Never stat through our own mount: a file in it is enough to forbid the device.
    backing.set(loop.dev, inside(loop.backing, realMount) ? null : await fsp.stat(loop.backing).catch(() => null));
  }
  for (let changed = true; changed;) {
    changed = false;
    for (const loop of loops) {
      if (forbidden.has(loop.dev)) continue;
      const st = backing.get(loop.dev);
      const bad = st === null
        ? inside(loop.backing, realMount)
        : st !== undefined && (
          (origin.kind === 'file' && majorMinor(st.dev) === origin.dev && st.ino === origin.ino) ||
          (st.isBlockDevice() && forbidden.has(majorMinor(st.rdev))) ||
          (st.isFile() && forbidden.has(majorMinor(st.dev))));
      if (bad) {
        forbidden.add(loop.dev);
        changed = true;
      }
    }
  }
  return forbidden;
}

/**
 * Check that `path` may hold difference storage for this mount (see the list above).
 * The change-tracking state file obeys the same rules; `what` names the file in errors.
 */
export async function checkStoragePath(path: string, mountpoint: string, origin: OriginIdentity, what = 'difference storage'): Promise<void> {
  const abs = resolve(path);
  const mount = resolve(mountpoint);
  const insideMount = (): BlksnapError =>
    BlksnapError.of('EINVAL', `${what} ${path} is inside the mount ${mount}; it must live outside it`);
  if (inside(abs, mount)) throw insideMount();
  const realMount = await fsp.realpath(mount).catch(() => mount);
  let realDir: string;
  try {
    realDir = await fsp.realpath(dirname(abs));
  } catch (err) {
    throw asBlksnapError(err, `${what} directory ${dirname(abs)}`);
  }
  const realPath = resolve(realDir, abs.slice(dirname(abs).length + 1));
  if (inside(realPath, realMount)) throw insideMount();
  let dirStat: Stats;
  try {
    dirStat = await fsp.stat(realDir);
  } catch (err) {
    throw asBlksnapError(err, `${what} directory ${realDir}`);
  }
  const fileStat = await fsp.stat(realPath).catch(() => null);
  if (fileStat !== null && origin.kind === 'file' && majorMinor(fileStat.dev) === origin.dev && fileStat.ino === origin.ino) {
    throw BlksnapError.of('EINVAL', `${what} ${path} is the origin itself`);
  }
  const storageDev = majorMinor(dirStat.dev);
  const forbidden = await forbiddenDevices(origin, realMount);
  if (forbidden.has(storageDev) || forbidden.has(await wholeDisk(storageDev))) {
    const via = origin.rdev !== null && (storageDev === origin.rdev || (await wholeDisk(storageDev)) === origin.rdev)
      ? `the origin device ${origin.path}`
      : `a loop device over the origin ${origin.path} or over a file in the mount`;
    throw BlksnapError.of('EXDEV', `${what} ${path} lives on ${via}; put it on another file system`);
  }
}
