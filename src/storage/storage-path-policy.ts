/**
 * Where a difference-storage file may live. The daemon must never do I/O to anything
 * backed by its own mount (a write into our own FUSE file system, or to a loop device
 * or a file system stacked on it, waits for a request only the daemon can answer), nor
 * put the copies of the origin onto the origin itself.
 *
 * The decision is made on devices and inodes, never on path strings (a symlink, a bind
 * mount or a second name would get around those): on what the path names before it is
 * opened (so a symlink into a forbidden place is EINVAL, not just "it exists"), and again
 * on the descriptor once it is open, which is the check that counts. Refused, EINVAL
 * each:
 * - a file on the mount itself (its st_dev is the FUSE mount's; a path under the mount
 *   point is refused before it is even looked up);
 * - the origin file, by device and inode, whatever its name;
 * - a file on a block device that carries the origin's data or the mount's: the origin
 *   device, a loop device whose backing file is the origin, lies on the mount or on
 *   such a device, or whose backing device is such a device; and anything stacked on
 *   one of those (a partition, a device-mapper or md device over it), to a fixed point.
 *
 * Loop devices are asked what backs them with LOOP_GET_STATUS64 (device and inode of the
 * backing file, from the kernel); /sys/block/loopN/loop/backing_file, a path, is only the
 * fallback when the device cannot be opened. Every call that may do I/O is asynchronous.
 */
import { constants as fsc, promises as fsp, type Stats } from 'node:fs';
import { dirname, resolve, sep } from 'node:path';
import { BlksnapError, asBlksnapError } from '../errors.js';
import type { OriginIdentity } from './origin-device.js';
import { majorMinor } from './devnum.js';
import { loopBacking } from './native.js';

/** What the policy protects: the origin and, once it is mounted, the mount. */
export interface PlacementGuard {
  origin: OriginIdentity;
  mountpoint: string;
}

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

/** /proc/self/mountinfo escapes spaces and the like as \ooo. */
function unescapeMountinfo(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/**
 * major:minor of the FUSE mounts at `mountpoint` (ours, once mounted), from the kernel's
 * mount table: no request goes to the mount to learn it.
 */
async function mountDevices(mountpoint: string): Promise<string[]> {
  const realParent = await fsp.realpath(dirname(mountpoint)).catch(() => dirname(mountpoint));
  const real = resolve(realParent, mountpoint.slice(dirname(mountpoint).length + 1));
  const text = await readSys('/proc/self/mountinfo');
  const found: string[] = [];
  for (const line of (text ?? '').split('\n')) {
    const fields = line.split(' ');
    const fstype = fields[fields.indexOf('-') + 1] ?? '';
    const point = unescapeMountinfo(fields[4] ?? '');
    if ((point === real || point === mountpoint) && fstype.startsWith('fuse') && fields[2] !== undefined) found.push(fields[2]);
  }
  return found;
}

/** The devices `dev` is stacked on: the whole disk of a partition, the slaves of a dm or md device. */
async function lowerDevices(dev: string): Promise<string[]> {
  const lower: string[] = [];
  if ((await readSys(`/sys/dev/block/${dev}/partition`)) !== null) {
    const whole = await readSys(`/sys/dev/block/${dev}/../dev`);
    if (whole !== null) lower.push(whole);
  }
  const slaves = await fsp.readdir(`/sys/dev/block/${dev}/slaves`).catch(() => [] as string[]);
  for (const name of slaves) {
    const slave = await readSys(`/sys/dev/block/${dev}/slaves/${name}/dev`);
    if (slave !== null) lower.push(slave);
  }
  return lower;
}

interface LoopDevice {
  name: string;
  dev: string;
  /** The backing file's device (major:minor), inode and, for a block device, its own major:minor. */
  backing: { dev: string; ino: number; rdev: string | null } | null;
}

async function backingOf(name: string, mountpoint: string): Promise<LoopDevice['backing']> {
  const fd = await fsp.open(`/dev/${name}`, fsc.O_RDONLY | fsc.O_NONBLOCK).catch(() => null);
  if (fd !== null) {
    try {
      const b = await loopBacking(fd.fd);
      if (b !== null) return { dev: majorMinor(b.dev), ino: b.ino, rdev: b.rdev === 0 ? null : majorMinor(b.rdev) };
    } finally {
      await fd.close();
    }
  }
  // Fallback: the path the kernel reports. A stat through our own mount is asynchronous, so it is answered.
  const path = await readSys(`/sys/block/${name}/loop/backing_file`);
  if (path === null) return null;
  const st = await fsp.stat(path.replace(/ \(deleted\)$/, '')).catch(() => null);
  if (st === null) return inside(path, mountpoint) ? { dev: 'the mount', ino: 0, rdev: null } : null;
  return { dev: majorMinor(st.dev), ino: st.ino, rdev: st.isBlockDevice() ? majorMinor(st.rdev) : null };
}

async function loopDevices(mountpoint: string): Promise<LoopDevice[]> {
  const names = await fsp.readdir('/sys/block').catch(() => [] as string[]);
  const found: LoopDevice[] = [];
  for (const name of names.filter((n) => /^loop\d+$/.test(n))) {
    const dev = await readSys(`/sys/block/${name}/dev`);
    if (dev === null || (await readSys(`/sys/block/${name}/loop/backing_file`)) === null) continue; // not bound
    found.push({ name, dev, backing: await backingOf(name, mountpoint) });
  }
  return found;
}

/** Why a device is forbidden, by major:minor. */
type Forbidden = Map<string, string>;

/**
 * Every block device whose data is the origin's or passes through the mount, with the
 * reason: the origin device, the mount's devices, and loop devices over any of those or
 * over the origin file, to a fixed point (loop devices stacked on loop devices).
 */
async function forbiddenDevices(guard: PlacementGuard, mountDevs: string[]): Promise<Forbidden> {
  const { origin } = guard;
  const forbidden: Forbidden = new Map();
  if (origin.rdev !== null) forbidden.set(origin.rdev, `the origin device ${origin.path}`);
  for (const dev of mountDevs) forbidden.set(dev, `the mount ${guard.mountpoint}`);
  forbidden.set('the mount', `the mount ${guard.mountpoint}`);
  const loops = await loopDevices(guard.mountpoint);
  for (let changed = true; changed;) {
    changed = false;
    for (const loop of loops) {
      if (forbidden.has(loop.dev) || loop.backing === null) continue;
      const b = loop.backing;
      const isOrigin = origin.kind === 'file' && b.dev === origin.dev && b.ino === origin.ino;
      const via = isOrigin ? `the origin ${origin.path}` : (await reasonFor(b.rdev, forbidden)) ?? (await reasonFor(b.dev, forbidden));
      if (via !== null) {
        forbidden.set(loop.dev, `/dev/${loop.name}, a loop device over ${via}`);
        changed = true;
      }
    }
  }
  return forbidden;
}

/** Why `dev` (or a device it is stacked on) is forbidden; null when it is not. */
async function reasonFor(dev: string | null, forbidden: Forbidden, depth = 0): Promise<string | null> {
  if (dev === null) return null;
  const direct = forbidden.get(dev);
  if (direct !== undefined) return direct;
  if (depth > 8) return null;
  for (const lower of await lowerDevices(dev)) {
    const why = await reasonFor(lower, forbidden, depth + 1);
    if (why !== null) return why;
  }
  return null;
}

function insideMountError(path: string, mountpoint: string, what: string): BlksnapError {
  return BlksnapError.of('EINVAL', `${what} ${path} is inside the mount ${mountpoint}; it must live outside it`);
}

/** EINVAL when a file with this device and inode may not hold difference storage. */
async function checkPlace(path: string, st: Pick<Stats, 'dev' | 'ino'>, guard: PlacementGuard, what: string): Promise<void> {
  const dev = majorMinor(st.dev);
  const { origin } = guard;
  if (origin.kind === 'file' && dev === origin.dev && st.ino === origin.ino) {
    throw BlksnapError.of('EINVAL', `${what} ${path} is the origin itself`);
  }
  const mountDevs = await mountDevices(guard.mountpoint);
  if (mountDevs.includes(dev)) throw insideMountError(path, guard.mountpoint, what);
  const why = await reasonFor(dev, await forbiddenDevices(guard, mountDevs));
  if (why !== null) {
    throw BlksnapError.of('EINVAL', `${what} ${path} lives on ${why}; put it on another file system`);
  }
}

/**
 * Before opening `path`: refuse a NUL byte, a path under the mount point (without looking
 * it up), and whatever the path names now, following symlinks, or its directory when it
 * does not exist yet. Returns the absolute path.
 */
export async function checkStoragePath(path: string, guard: PlacementGuard, what = 'difference storage'): Promise<string> {
  if (path.includes('\0')) throw BlksnapError.of('EINVAL', `a ${what} path cannot hold a NUL byte`);
  const abs = resolve(path);
  const mount = resolve(guard.mountpoint);
  if (inside(abs, mount)) throw insideMountError(path, mount, what);
  const named = await fsp.stat(abs).catch((err: unknown) => err as NodeJS.ErrnoException);
  if (!(named instanceof Error)) {
    await checkPlace(path, named, guard, what);
    return abs;
  }
  if (named.code !== 'ENOENT') throw asBlksnapError(named, `${what} ${path}`);
  let dir: Stats;
  try {
    dir = await fsp.stat(dirname(abs));
  } catch (err) {
    throw asBlksnapError(err, `${what} directory ${dirname(abs)}`);
  }
  if (!dir.isDirectory()) throw BlksnapError.of('ENOTDIR', `${what} directory ${dirname(abs)} is not a directory`);
  await checkPlace(path, dir, guard, what);
  return abs;
}

/** After opening: the descriptor's own device and inode, the check that counts. */
export async function checkOpenedStorage(path: string, st: Pick<Stats, 'dev' | 'ino'>, guard: PlacementGuard): Promise<void> {
  await checkPlace(path, st, guard, 'difference storage');
}
