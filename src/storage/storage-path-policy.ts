/**
 * Where a difference-storage file may live. The daemon must never do I/O to anything
 * backed by its own mount (a synchronous write into our own FUSE file system, or to a
 * loop device over it, freezes the mount), nor put the copies of the origin onto the
 * origin itself.
 */
import { promises as fsp, type Stats } from 'node:fs';
import { dirname, resolve, sep } from 'node:path';
import { BlksnapError, asBlksnapError } from '../errors.js';
import type { OriginIdentity } from './origin-device.js';
import { majorMinor } from './devnum.js';

function inside(path: string, dir: string): boolean {
  return path === dir || path.startsWith(dir.endsWith(sep) ? dir : dir + sep);
}

/** major:minor of every loop device whose backing file is the inode dev:ino (from sysfs). */
async function loopDevicesBackedBy(dev: string, ino: number): Promise<string[]> {
  const names = await fsp.readdir('/sys/block').catch(() => [] as string[]);
  const found: string[] = [];
  for (const name of names.filter((n) => n.startsWith('loop'))) {
    try {
      const backing = (await fsp.readFile(`/sys/block/${name}/loop/backing_file`, 'utf8')).trim();
      const st = await fsp.stat(backing);
      if (majorMinor(st.dev) === dev && st.ino === ino) {
        found.push((await fsp.readFile(`/sys/block/${name}/dev`, 'utf8')).trim());
      }
    } catch {
      // not attached, or its backing file is gone
    }
  }
  return found;
}

/**
 * Check that `path` may hold difference storage for this mount. Refuses a path inside
 * the mount point, the origin file itself, and anything that lives on the origin device
 * or on a loop device over the origin.
 */
export async function checkStoragePath(path: string, mountpoint: string, origin: OriginIdentity): Promise<void> {
  const abs = resolve(path);
  const realMount = await fsp.realpath(mountpoint).catch(() => resolve(mountpoint));
  let realDir: string;
  try {
    realDir = await fsp.realpath(dirname(abs));
  } catch (err) {
    throw asBlksnapError(err, `difference storage directory ${dirname(abs)}`);
  }
  const realPath = resolve(realDir, abs.slice(dirname(abs).length + 1));
  if (inside(realPath, realMount)) {
    throw BlksnapError.of('EINVAL', `difference storage ${path} is inside the mount ${mountpoint}; it must live outside it`);
  }
  let dirStat: Stats;
  try {
    dirStat = await fsp.stat(realDir);
  } catch (err) {
    throw asBlksnapError(err, `difference storage directory ${realDir}`);
  }
  const fileStat = await fsp.stat(realPath).catch(() => null);
  if (fileStat !== null && origin.kind === 'file' && majorMinor(fileStat.dev) === origin.dev && fileStat.ino === origin.ino) {
    throw BlksnapError.of('EINVAL', `difference storage ${path} is the origin itself`);
  }
  const storageDev = majorMinor(dirStat.dev);
  if (origin.rdev !== null && storageDev === origin.rdev) {
    throw BlksnapError.of('EXDEV', `difference storage ${path} lives on the origin device ${origin.path}`);
  }
  if (origin.kind === 'file') {
    const loops = await loopDevicesBackedBy(origin.dev, origin.ino);
    if (loops.includes(storageDev)) {
      throw BlksnapError.of('EXDEV', `difference storage ${path} lives on a loop device over the origin ${origin.path}`);
    }
  }
}
