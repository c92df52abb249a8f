/**
 * The origin: a disk image file or a block device, opened once and held for the life
 * of the mount. Holding the descriptor is what makes its identity race-free: whatever
 * the path later points to, we keep reading and writing the device or inode we opened,
 * and /status names it by device numbers and inode.
 */
import { constants as fsc, promises as fsp, type BigIntStats, type Stats } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { BlksnapError, asBlksnapError } from '../errors.js';
import {
  FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, blockDeviceSize, fallocateModeAsync, logicalBlockSize,
  loopBacking, seekAsync, tryLockExclusive, unlock, type LoopBacking,
} from './native.js';
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

/** How the origin is made to read zeros: its bytes deallocated (discard), or zeroed in place. */
export type ZeroKind = 'punch' | 'zero';

/** The cause of the EBUSY when another blksnapfs daemon holds the origin's lock. */
const LOCKED = Symbol('origin locked by blksnapfs');

export class OriginDevice {
  /** Is `err` the refusal because another blksnapfs daemon holds the origin? */
  static isLockedByBlksnapfs(err: BlksnapError): boolean {
    return err.cause === LOCKED;
  }

  readonly identity: OriginIdentity;
  readonly readOnly: boolean;
  /** What a block device's fallocate must be aligned to (its logical sector); 1 for a file. */
  readonly zeroAlignment: number;
  private readonly file: fsp.FileHandle;
  /** Bytes allocated to the origin as last seen (st_blocks * 512; a block device: its size). */
  private allocated: number;
  private refreshing: Promise<number> | null = null;

  private constructor(file: fsp.FileHandle, identity: OriginIdentity, readOnly: boolean, allocated: number, zeroAlignment: number) {
    this.file = file;
    this.identity = identity;
    this.readOnly = readOnly;
    this.allocated = allocated;
    this.zeroAlignment = zeroAlignment;
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
      const blockDevice = kind === 'block-device';
      return new OriginDevice(file, identity, options.readOnly, blockDevice ? size : fst.blocks * 512, blockDevice ? logicalBlockSize(file.fd) : 1);
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
   * The first byte of data at or after `offset`, or null when only holes follow (and
   * at or past the end). A block device is all data: its kernel reports no holes.
   */
  async seekData(offset: number): Promise<number | null> {
    if (offset >= this.identity.size) return null;
    if (this.identity.kind === 'block-device') return offset;
    const at = await seekAsync(this.file.fd, offset, 'data');
    return at === null || at >= this.identity.size ? null : at;
  }

  /** The first hole at or after `offset` (< the size); the size when there is none before the end. */
  async seekHole(offset: number): Promise<number> {
    if (offset >= this.identity.size || this.identity.kind === 'block-device') return this.identity.size;
    const at = await seekAsync(this.file.fd, offset, 'hole');
    return at === null ? this.identity.size : Math.min(at, this.identity.size);
  }

  /**
   * Make [offset, offset + length) read as zeros with fallocate(2): `punch` deallocates
   * it (an image file gets a hole; a block device discards or zeroes, as its driver
   * does), `zero` zeroes it in place. EOPNOTSUPP when the origin cannot.
   */
  async fallocate(kind: ZeroKind, offset: number, length: number): Promise<void> {
    const mode = kind === 'punch' ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE : FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
    await fallocateModeAsync(this.file.fd, mode, offset, length);
  }

  /** Bytes allocated to the origin as last seen (an image file's st_blocks; a block device: its size). */
  get allocatedBytes(): number {
    return this.allocated;
  }

  /** fstat the origin now: its allocated bytes (also kept as `allocatedBytes`). */
  async refreshAllocation(): Promise<number> {
    if (this.identity.kind === 'block-device') return this.allocated;
    const st = await this.file.stat();
    this.allocated = st.blocks * 512;
    return this.allocated;
  }

  /**
   * Refresh `allocatedBytes` in the background (a getattr must not wait for a stat),
   * at most one at a time; a failed stat keeps the old figure.
   */
  refreshAllocationSoon(): void {
    if (this.refreshing !== null) return;
    this.refreshing = this.refreshAllocation().catch(() => this.allocated).finally(() => {
      this.refreshing = null;
    });
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
