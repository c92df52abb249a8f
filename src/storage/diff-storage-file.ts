/**
 * One file of the difference storage: created (or reused), marked as blksnapfs's own
 * (storage-mark.ts), preallocated with fallocate, locked with flock, and read and
 * written only with O_DIRECT, in whole aligned blocks. The daemon owns it for the life
 * of the mount.
 *
 * Which file it may be (the interface contract): one that does not exist (created with
 * O_CREAT|O_EXCL|O_NOFOLLOW, never through a symlink), an empty one, or, for the
 * `diff_storage` option, one that carries blksnapfs's mark; anything else is somebody's
 * data and is refused with EEXIST, untouched. Where it may live is checked on the open
 * descriptor (storage-path-policy.ts) before anything is written.
 *
 * The file can grow while it is in use (`extend`, for automatic growth): new space is
 * added at its end, so every byte already handed out keeps its position. Its usable
 * space starts after the header (`dataOffset`).
 *
 * Before any preallocation the free space of the file system is checked: fallocate
 * that cannot be satisfied fills the file system up to the last block before it fails,
 * which would starve everything else on it for a moment. Every call that may wait for
 * I/O is asynchronous (see native.ts for why).
 */
import { constants as fsc, promises as fsp, type Stats } from 'node:fs';
import { dirname } from 'node:path';
import { BlksnapError, asBlksnapError } from '../errors.js';
import { formatSize } from '../sizes.js';
import { fallocateAsync, tryLockExclusive, unlock } from './native.js';
import { readFully, writeFully } from './io.js';
import { DIRECT_IO_ALIGNMENT } from './aligned.js';
import { HEADER_BYTES, hasMark, writeMark } from './storage-mark.js';

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

/** Which existing files `open` may take. */
export type ExistingFilePolicy =
  /** `diff_storage`: an empty file, or one blksnapfs made (it carries the mark). */
  | 'empty-or-marked'
  /** storage-append: only an empty file. */
  | 'empty';

export interface OpenOptions {
  existing: ExistingFilePolicy;
  /** Where it may live, decided on the open descriptor before anything is written (EINVAL). */
  checkPlace(stats: Stats): Promise<void>;
}

const OPEN_NEW = fsc.O_RDWR | fsc.O_DIRECT | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW;
// O_NONBLOCK: a FIFO at the path must not hold the open (it is refused just after).
const OPEN_EXISTING = fsc.O_RDWR | fsc.O_DIRECT | fsc.O_NOFOLLOW | fsc.O_NONBLOCK;

/** Open `path` new, or as it exists; EEXIST for a symlink (never followed). */
async function openStorage(path: string): Promise<{ file: fsp.FileHandle; created: boolean }> {
  try {
    return { file: await fsp.open(path, OPEN_NEW, 0o600), created: true };
  } catch (err) {
    if ((err as { code?: string }).code !== 'EEXIST') throw asBlksnapError(err, `cannot create difference storage ${path}`);
  }
  try {
    return { file: await fsp.open(path, OPEN_EXISTING), created: false };
  } catch (err) {
    if ((err as { code?: string }).code === 'ELOOP') {
      throw BlksnapError.of('EEXIST', `difference storage ${path} exists and is a symbolic link; blksnapfs never opens its storage through one`);
    }
    throw asBlksnapError(err, `cannot open difference storage ${path}`);
  }
}

export class DiffStorageFile {
  readonly path: string;
  /** True when this mount created the file, so it is ours to remove at unmount. */
  readonly created: boolean;
  readonly dev: number;
  readonly ino: number;
  /** Where the usable space starts in the file: after blksnapfs's header. */
  readonly dataOffset = HEADER_BYTES;
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

  /** Bytes preallocated and usable (a multiple of the direct-I/O alignment), the header not counted. */
  get size(): number {
    return this.currentSize;
  }

  /** The file's length: the header and the usable space. */
  get end(): number {
    return this.dataOffset + this.currentSize;
  }

  /**
   * Open or create `path` and make sure at least `size` usable bytes are preallocated.
   * On failure nothing is left changed: a file it created is removed, an existing one
   * gets its old size back, and one it was not allowed to take was never written.
   */
  static async open(path: string, size: number, options: OpenOptions): Promise<DiffStorageFile> {
    if (size <= 0 || size % DIRECT_IO_ALIGNMENT !== 0) {
      throw BlksnapError.of('EINVAL', `difference storage size must be a positive multiple of ${DIRECT_IO_ALIGNMENT} bytes`);
    }
    const { file, created } = await openStorage(path);
    let oldSize: number | null = null;
    let locked = false;
    /** Remove the file on failure: only one this call created and nobody else took meanwhile. */
    let removeOnFailure = created;
    try {
      const st = await file.stat();
      await options.checkPlace(st);
      if (!st.isFile()) throw BlksnapError.of(created ? 'EINVAL' : 'EEXIST', `difference storage ${path} exists and is not a regular file`);
      const marked = !created && st.size > 0 && options.existing === 'empty-or-marked' && (await hasMark(file, st.size));
      if (!created && st.size > 0 && !marked) {
        throw BlksnapError.of('EEXIST', options.existing === 'empty'
          ? `difference storage ${path} already exists and is not empty`
          : `difference storage ${path} already exists, is not empty and was not made by blksnapfs; refusing to overwrite it`);
      }
      if (!tryLockExclusive(file.fd)) {
        removeOnFailure = false; // a concurrent open of the same new file locked it first: it is theirs
        throw BlksnapError.of('EBUSY', `difference storage ${path} is in use by another mount`);
      }
      locked = true;
      const usable = Math.max(size, marked ? st.size - HEADER_BYTES - ((st.size - HEADER_BYTES) % DIRECT_IO_ALIGNMENT) : 0);
      await checkRoom(path, HEADER_BYTES + usable - st.blocks * 512);
      oldSize = st.size;
      // The mark first: a crash from here on leaves a file a later mount may take back.
      if (!marked) await writeMark(file);
      try {
        await fallocateAsync(file.fd, 0, HEADER_BYTES + usable);
      } catch (err) {
        throw asBlksnapError(err, `cannot preallocate ${formatSize(usable)} for difference storage ${path}`);
      }
      return new DiffStorageFile(path, file, usable, created, st.dev, st.ino);
    } catch (err) {
      if (!created && oldSize !== null) await file.truncate(oldSize).catch(() => undefined);
      if (locked) unlock(file.fd);
      await file.close();
      if (removeOnFailure) await fsp.rm(path, { force: true });
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
    const from = this.end;
    await checkRoom(this.path, bytes);
    try {
      await fallocateAsync(this.file.fd, from, bytes);
    } catch (err) {
      await this.file.truncate(from).catch(() => undefined);
      throw asBlksnapError(err, `cannot extend difference storage ${this.path} by ${formatSize(bytes)}`);
    }
    this.currentSize += bytes;
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
