/**
 * One file of the difference storage: created (or reused), preallocated with
 * fallocate, locked with flock, and read and written only with O_DIRECT, in whole
 * aligned blocks. The daemon owns it for the life of the mount.
 *
 * The file can grow while it is in use (`extend`, for automatic growth): new space is
 * added at its end, so every byte already handed out keeps its position.
 *
 * Before any preallocation the free space of the file system is checked: fallocate
 * that cannot be satisfied fills the file system up to the last block before it fails,
 * which would starve everything else on it for a moment.
 */
import { constants as fsc, promises as fsp } from 'node:fs';
import { dirname } from 'node:path';
import { BlksnapError, asBlksnapError } from '../errors.js';
import { formatSize } from '../sizes.js';
import { fallocate, fallocateAsync, tryLockExclusive, unlock } from './native.js';
import { readFully, writeFully } from './io.js';
import { DIRECT_IO_ALIGNMENT } from './aligned.js';

/** ENOSPC unless the file system holding `path` has `bytes` available to ordinary users. */
async function checkRoom(path: string, bytes: number): Promise<void> {
  if (bytes <= 0) return;
  let avail: number;
  try {
    const st = await fsp.statfs(dirname(path));
    avail = st.bavail * st.bsize;
  } catch {
    return; // cannot tell: let fallocate decide
  }
  if (bytes > avail) {
    throw BlksnapError.of('ENOSPC', `no room for ${formatSize(bytes)} of difference storage at ${path}: ${formatSize(avail)} available on that file system`);
  }
}

export class DiffStorageFile {
  readonly path: string;
  /** True when this mount created the file, so it is ours to remove at unmount. */
  readonly created: boolean;
  readonly dev: number;
  readonly ino: number;
  private readonly file: fsp.FileHandle;
  private currentSize: number;

  private constructor(path: string, file: fsp.FileHandle, size: number, created: boolean, dev: number, ino: number) {
    this.path = path;
    this.file = file;
    this.currentSize = size;
    this.created = created;
    this.dev = dev;
    this.ino = ino;
  }

  /** Bytes preallocated and usable (a multiple of the direct-I/O alignment). */
  get size(): number {
    return this.currentSize;
  }

  /**
   * Open or create `path` and make sure at least `size` bytes are preallocated.
   * `mustBeEmpty` refuses an existing file that holds data (used when appending, where
   * reusing somebody's file would destroy it). On failure nothing is left changed: a
   * file it created is removed, an existing one gets its old size back.
   */
  static async open(path: string, size: number, options: { mustBeEmpty: boolean }): Promise<DiffStorageFile> {
    if (size <= 0 || size % DIRECT_IO_ALIGNMENT !== 0) {
      throw BlksnapError.of('EINVAL', `difference storage size must be a positive multiple of ${DIRECT_IO_ALIGNMENT} bytes`);
    }
    let created = false;
    let file: fsp.FileHandle;
    try {
      file = await fsp.open(path, fsc.O_RDWR | fsc.O_DIRECT | fsc.O_CREAT | fsc.O_EXCL, 0o600);
      created = true;
    } catch (err) {
      if ((err as { code?: string }).code !== 'EEXIST') throw asBlksnapError(err, `cannot create difference storage ${path}`);
      try {
        file = await fsp.open(path, fsc.O_RDWR | fsc.O_DIRECT);
      } catch (err2) {
        throw asBlksnapError(err2, `cannot open difference storage ${path}`);
      }
    }
    let oldSize: number | null = null;
    try {
      const st = await file.stat();
      if (!st.isFile()) throw BlksnapError.of('EINVAL', `difference storage ${path} is not a regular file`);
      if (!created && options.mustBeEmpty && st.size > 0) {
        throw BlksnapError.of('EEXIST', `difference storage ${path} already exists and is not empty`);
      }
      if (!tryLockExclusive(file.fd)) throw BlksnapError.of('EBUSY', `difference storage ${path} is in use by another mount`);
      const finalSize = Math.max(size, st.size - (st.size % DIRECT_IO_ALIGNMENT));
      await checkRoom(path, finalSize - st.blocks * 512);
      oldSize = st.size;
      try {
        fallocate(file.fd, 0, finalSize);
      } catch (err) {
        throw asBlksnapError(err, `cannot preallocate ${finalSize} bytes for difference storage ${path}`);
      }
      return new DiffStorageFile(path, file, finalSize, created, st.dev, st.ino);
    } catch (err) {
      if (!created && oldSize !== null) await file.truncate(oldSize).catch(() => undefined);
      unlock(file.fd);
      await file.close();
      if (created) await fsp.rm(path, { force: true });
      throw err;
    }
  }

  /**
   * Preallocate `bytes` more at the end of the file (off the event loop). On failure
   * the file keeps its size; the caller decides what to try next.
   */
  async extend(bytes: number): Promise<void> {
    if (bytes <= 0 || bytes % DIRECT_IO_ALIGNMENT !== 0) {
      throw BlksnapError.of('EINVAL', `difference storage growth must be a positive multiple of ${DIRECT_IO_ALIGNMENT} bytes`);
    }
    const from = this.currentSize;
    await checkRoom(this.path, bytes);
    try {
      await fallocateAsync(this.file.fd, from, bytes);
    } catch (err) {
      await this.file.truncate(from).catch(() => undefined);
      throw asBlksnapError(err, `cannot extend difference storage ${this.path} by ${formatSize(bytes)}`);
    }
    this.currentSize = from + bytes;
  }

  /** Write whole aligned blocks (O_DIRECT: buf, offset and length aligned). */
  write(buf: Buffer, length: number, position: number): Promise<void> {
    return writeFully(this.file, buf, 0, length, position);
  }

  read(buf: Buffer, length: number, position: number): Promise<void> {
    return readFully(this.file, buf, 0, length, position);
  }

  async close(): Promise<void> {
    unlock(this.file.fd);
    await this.file.close();
    if (this.created) await fsp.rm(this.path, { force: true });
  }
}
