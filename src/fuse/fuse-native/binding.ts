/**
 * The one typed boundary to fuse-native, which ships no types. Everything untyped
 * about the binding stays in this file; the rest of the code sees FuseOps and
 * FuseInstance.
 */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

export type Cb = (code: number) => void;
export type CbWith<T> = (code: number, value?: T) => void;

export interface FuseStat {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  mtime: Date;
  atime: Date;
  ctime: Date;
  blksize: number;
  blocks: number;
}

export interface FuseStatFs {
  bsize: number; frsize: number; blocks: number; bfree: number; bavail: number;
  files: number; ffree: number; favail: number; namemax: number;
}

/** The callbacks blksnapfs implements (fuse-native's names and argument orders). */
export interface FuseOps {
  init(cb: Cb): void;
  getattr(path: string, cb: CbWith<FuseStat>): void;
  fgetattr(path: string, fd: number, cb: CbWith<FuseStat>): void;
  readdir(path: string, cb: (code: number, names?: string[]) => void): void;
  open(path: string, flags: number, cb: CbWith<number>): void;
  release(path: string, fd: number, cb: Cb): void;
  read(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: Cb): void;
  write(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: Cb): void;
  truncate(path: string, size: number, cb: Cb): void;
  ftruncate(path: string, fd: number, size: number, cb: Cb): void;
  flush(path: string, fd: number, cb: Cb): void;
  fsync(path: string, datasync: boolean, fd: number, cb: Cb): void;
  mkdir(path: string, mode: number, cb: Cb): void;
  rmdir(path: string, cb: Cb): void;
  unlink(path: string, cb: Cb): void;
  rename(src: string, dest: string, cb: Cb): void;
  create(path: string, mode: number, cb: CbWith<number>): void;
  mknod(path: string, mode: number, dev: number, cb: Cb): void;
  link(src: string, dest: string, cb: Cb): void;
  symlink(src: string, dest: string, cb: Cb): void;
  chmod(path: string, mode: number, cb: Cb): void;
  chown(path: string, uid: number, gid: number, cb: Cb): void;
  utimens(path: string, atime: number, mtime: number, cb: Cb): void;
  statfs(path: string, cb: CbWith<FuseStatFs>): void;
}

export interface FuseInstance {
  mount(cb: (err: Error | null) => void): void;
  unmount(cb: (err: Error | null) => void): void;
}

interface FuseConstructor {
  new (mountpoint: string, ops: FuseOps, opts: Record<string, unknown>): FuseInstance;
}

const FuseClass = require('fuse-native') as FuseConstructor;

/**
 * Create a fuse-native instance whose libfuse options are exactly `options` (the
 * binding's own option builder drops some values and mangles others).
 */
export function createFuse(mountpoint: string, ops: FuseOps, options: string[]): FuseInstance {
  const instance = new FuseClass(mountpoint, ops, { timeout: false }) as any;
  instance._fuseOptions = (): string => (options.length > 0 ? `-o${options.join(',')}` : '');
  return instance as FuseInstance;
}
