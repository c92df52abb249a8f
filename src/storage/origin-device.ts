/**
 * The origin: a disk image file or a block device, opened once and held for the life
 * of the mount. Holding the descriptor is what makes its identity race-free: whatever
 * the path later points to, we keep reading and writing the device or inode we opened,
 * and /status names it by device numbers and inode.
 */
import { constants as fsc, promises as fsp, type BigIntStats, type Stats } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { BlksnapError, asBlksnapError } from '../errors.js';
import { blockDeviceSize, loopBacking, tryLockExclusive, unlock, type LoopBacking } from './native.js';
import { readFully, writeFully } from './io.js';
import { majorMinor } from './devnum.js';
import { willNeed } from './readahead-hint.js';

export type OriginKind = 'file' | 'block-device';

export interface OriginIdentity {
  path: string;
  kind: OriginKind;
  size: number;
  /** st_dev of the inode: the file system an image file lives on. */
  dev: string;
  ino: number;
  /** For a block device: its own major:minor. */
  rdev: string | null;
  /** For a block device: the kernel's disk sequence number, where it has one. */
  diskseq: number | null;
  /** Permission bits of the origin's inode: the mount never grants more than these. */
  mode: number;
  uid: number;
  gid: number;
}

async function readDiskseq(rdev: string): Promise<number | null> {
  try {
    const text = await readFile(`/sys/dev/block/${rdev}/diskseq`, 'utf8');
    const value = Number(text.trim());
    return Number.isFinite(value) ? value : null;
  } catch {
    return null;
  }
}

/** The cause of the EBUSY when another blksnapfs daemon holds the origin's lock. */
const LOCKED = Symbol('origin locked by blksnapfs');

export class OriginDevice {
  /** Is `err` the refusal because another blksnapfs daemon holds the origin? */
  static isLockedByBlksnapfs(err: BlksnapError): boolean {
    return err.cause === LOCKED;
  }

  readonly identity: OriginIdentity;
  readonly readOnly: boolean;
  private readonly file: fsp.FileHandle;

  private constructor(file: fsp.FileHandle, identity: OriginIdentity, readOnly: boolean) {
    this.file = file;
    this.identity = identity;
    this.readOnly = readOnly;
  }

  get size(): number {
    return this.identity.size;
  }

  /**
   * The descriptor we hold (the native fast path duplicates it to read and write the
   * same file; a fanotify or inotify mark through /proc/self/fd/N lands on exactly the
   * inode we hold, modify-watch.ts). Never close it.
   */
  get fd(): number {
    return this.file.fd;
  }

  /**
   * Open the origin and claim it: an exclusive open for a block device (the kernel
   * refuses it while the device is mounted or claimed elsewhere), and an flock for both
   * kinds, so a second blksnapfs mount of the same origin fails at once.
   */
  static async open(path: string, options: { readOnly: boolean }): Promise<OriginDevice> {
    let st: Stats;
    try {
      st = await fsp.stat(path);
    } catch (err) {
      throw asBlksnapError(err, `origin ${path}`);
    }
    if (st.isDirectory()) throw BlksnapError.of('EISDIR', `origin ${path} is a directory, not a disk image or block device`);
    const kind: OriginKind | null = st.isBlockDevice() ? 'block-device' : st.isFile() ? 'file' : null;
    if (kind === null) throw BlksnapError.of('EINVAL', `origin ${path} is neither a regular file nor a block device`);

    const mode = options.readOnly ? fsc.O_RDONLY : fsc.O_RDWR;
    const flags = mode | (kind === 'block-device' ? fsc.O_EXCL : 0);
    let file: fsp.FileHandle;
    try {
      file = await fsp.open(path, flags);
    } catch (err) {
      const e = asBlksnapError(err, `cannot open origin ${path}`);
      if (e.code === 'EBUSY') throw BlksnapError.of('EBUSY', `origin ${path} is in use (mounted or claimed by another program)`);
      throw e;
    }
    try {
      if (!tryLockExclusive(file.fd)) throw new BlksnapError('EBUSY', `origin ${path} is already mounted by another blksnapfs`, { cause: LOCKED });
      const fst = await file.stat();
      const size = kind === 'block-device' ? blockDeviceSize(file.fd) : fst.size;
      if (size === 0) throw BlksnapError.of('EINVAL', `origin ${path} is empty`);
      const rdev = kind === 'block-device' ? majorMinor(fst.rdev) : null;
      const identity: OriginIdentity = {
        path,
        kind,
        size,
        dev: majorMinor(fst.dev),
        ino: fst.ino,
        rdev,
        diskseq: rdev === null ? null : await readDiskseq(rdev),
        mode: fst.mode & 0o7777,
        uid: fst.uid,
        gid: fst.gid,
      };
      return new OriginDevice(file, identity, options.readOnly);
    } catch (err) {
      await file.close();
      throw err;
    }
  }

  read(buf: Buffer, offset: number, length: number, position: number): Promise<void> {
    return readFully(this.file, buf, offset, length, position);
  }

  write(buf: Buffer, offset: number, length: number, position: number): Promise<void> {
    return writeFully(this.file, buf, offset, length, position);
  }

  /**
   * Ask the kernel to start reading [offset, offset + length) into the page cache (for
   * image readers that skip over saved chunks, a pattern its own read-ahead misses).
   */
  willNeed(offset: number, length: number): void {
    willNeed(this.file.fd, offset, Math.max(0, Math.min(length, this.identity.size - offset)));
  }

  /**
   * What the loop device we hold reads and writes (LOOP_GET_STATUS64 on our descriptor):
   * its backing file's device and inode, even when that file was deleted or renamed.
   * null for anything else.
   */
  loopBacking(): Promise<LoopBacking | null> {
    return this.identity.kind === 'block-device' ? loopBacking(this.file.fd) : Promise.resolve(null);
  }

  /** fstat of what we hold open, with nanosecond times (for the change-tracking fingerprint). */
  statNs(): Promise<BigIntStats> {
    return this.file.stat({ bigint: true });
  }

  async flush(): Promise<void> {
    await this.file.datasync();
  }

  async close(): Promise<void> {
    try {
      if (!this.readOnly) await this.file.datasync();
    } finally {
      unlock(this.file.fd);
      await this.file.close();
    }
  }

}
