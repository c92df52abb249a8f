/**
 * One file of the difference storage: created (or reused), preallocated with
 * fallocate, locked with flock, and read and written only with O_DIRECT, in whole
 * aligned blocks. The daemon owns it for the life of the mount.
 */
import { constants as fsc, promises as fsp } from 'node:fs';
import { BlksnapError, asBlksnapError } from '../errors.js';
import { fallocate, tryLockExclusive, unlock } from './native.js';
import { readFully, writeFully } from './io.js';
import { DIRECT_IO_ALIGNMENT } from './aligned.js';

export class DiffStorageFile {
  readonly path: string;
  readonly size: number;
  /** True when this mount created the file, so it is ours to remove at unmount. */
  readonly created: boolean;
  readonly dev: number;
  readonly ino: number;
  private readonly file: fsp.FileHandle;

  private constructor(path: string, file: fsp.FileHandle, size: number, created: boolean, dev: number, ino: number) {
    this.path = path;
    this.file = file;
    this.size = size;
    this.created = created;
    this.dev = dev;
    this.ino = ino;
  }

  /**
   * Open or create `path` and make sure at least `size` bytes are preallocated.
   * `mustBeEmpty` refuses an existing file that holds data (used when appending, where
   * reusing somebody's file would destroy it).
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
    try {
      const st = await file.stat();
      if (!st.isFile()) throw BlksnapError.of('EINVAL', `difference storage ${path} is not a regular file`);
      if (!created && options.mustBeEmpty && st.size > 0) {
        throw BlksnapError.of('EEXIST', `difference storage ${path} already exists and is not empty`);
      }
      if (!tryLockExclusive(file.fd)) throw BlksnapError.of('EBUSY', `difference storage ${path} is in use by another mount`);
      const finalSize = Math.max(size, st.size - (st.size % DIRECT_IO_ALIGNMENT));
      try {
        fallocate(file.fd, 0, finalSize);
      } catch (err) {
        throw asBlksnapError(err, `cannot preallocate ${finalSize} bytes for difference storage ${path}`);
      }
      return new DiffStorageFile(path, file, finalSize, created, st.dev, st.ino);
    } catch (err) {
      await file.close();
      if (created) await fsp.rm(path, { force: true });
      throw err;
    }
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
