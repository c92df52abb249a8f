/**
 * The few system calls Node's fs lacks, through koffi (an FFI that ships prebuilt
 * binaries, so nothing is compiled at install): fallocate for preallocation and for
 * punching holes and zeroing ranges, lseek(SEEK_DATA / SEEK_HOLE) for where a file's
 * holes are, flock for ownership of a file, ioctl(BLKGETSIZE64) and ioctl(BLKSSZGET)
 * for the size and the sector size of a block device,
 * ioctl(LOOP_GET_STATUS64) for what a loop device is backed by, and the address of a
 * Buffer so we can hand O_DIRECT a properly aligned slice.
 *
 * Calls that can wait for I/O run on koffi's worker threads (`.async`), never on the
 * main thread: the main thread answers our own FUSE requests, and a call that needs one
 * of them answered (a loop device or file system stacked on the mount) would wait for
 * itself forever.
 */
import koffi from 'koffi';
import { BlksnapError, errnoNameOfNumber } from '../errors.js';
import { constants as osConstants } from 'node:os';

const libc = koffi.load('libc.so.6');
// Returns the error number instead of setting errno, so it can run on koffi's worker threads.
const posixFallocateFn = libc.func('int posix_fallocate(int fd, int64_t offset, int64_t len)');
const flockFn = libc.func('int flock(int fd, int operation)');
const ioctlU64Fn = libc.func('int ioctl(int fd, unsigned long request, _Out_ uint64_t *out)');
const ioctlBufferFn = libc.func('int ioctl(int fd, unsigned long request, void *out)');
const ioctlIntFn = libc.func('int ioctl(int fd, unsigned long request, _Out_ int *out)');
// These two set errno; koffi hands an asynchronous call's errno to its callback (koffi.errno()).
const lseekFn = libc.func('int64_t lseek(int fd, int64_t offset, int whence)');
const fallocateFn = libc.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)');

const LOCK_EX = 2;
const LOCK_NB = 4;
const LOCK_UN = 8;
const BLKGETSIZE64 = 0x80081272;
const BLKSSZGET = 0x1268;
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
/** fallocate(2) mode bits (linux/falloc.h). */
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;
const LOOP_GET_STATUS64 = 0x4c05;
/** sizeof(struct loop_info64) */
const LOOP_INFO64_BYTES = 232;

function fail(what: string): never {
  const errno = koffi.errno();
  const code = errnoNameOfNumber(errno);
  throw BlksnapError.of(code, `${what}: ${code}`);
}

/**
 * Reserve `length` bytes at `offset` (the file grows to cover them), off the event loop
 * (on a koffi worker thread): preallocating must neither stall the requests being
 * served nor wait for one of them.
 */
export function fallocateAsync(fd: number, offset: number, length: number): Promise<void> {
  return new Promise((resolve, reject) => {
    posixFallocateFn.async(fd, offset, length, (err: unknown, result: number) => {
      if (err !== null && err !== undefined) {
        reject(BlksnapError.of('EIO', `fallocate: ${err instanceof Error ? err.message : String(err)}`, err));
      } else if (result !== 0) {
        const code = errnoNameOfNumber(result);
        reject(BlksnapError.of(code, `fallocate: ${code}`));
      } else {
        resolve();
      }
    });
  });
}

/**
 * koffi queues at most 256 asynchronous calls and throws past that. Seeks and hole
 * punches come from requests (one per lseek or discard, one per chunk copy), so they
 * wait their turn here instead, well below that limit.
 */
const ASYNC_CALLS = 64;
let asyncRunning = 0;
const asyncWaiting: Array<() => void> = [];

async function inAsyncTurn<T>(call: () => Promise<T>): Promise<T> {
  if (asyncRunning >= ASYNC_CALLS) await new Promise<void>((resolve) => asyncWaiting.push(resolve));
  else asyncRunning++;
  try {
    return await call();
  } finally {
    // The turn passes straight to the next in line (asyncRunning stays counted for it).
    const next = asyncWaiting.shift();
    if (next !== undefined) next();
    else asyncRunning--;
  }
}

function asyncError(what: string, err: unknown): BlksnapError {
  return BlksnapError.of('EIO', `${what}: ${err instanceof Error ? err.message : String(err)}`, err);
}

/** Where a seek looks: the next data, or the next hole. */
export type SeekWhat = 'data' | 'hole';

/**
 * lseek(SEEK_DATA | SEEK_HOLE) off the event loop (a file system may read its extent
 * tree to answer): the offset found, or null for ENXIO (no data at or after `offset`,
 * or `offset` at or past the end). The end of a file counts as a hole.
 */
export function seekAsync(fd: number, offset: number, what: SeekWhat): Promise<number | null> {
  return inAsyncTurn(() => new Promise((resolve, reject) => {
    lseekFn.async(fd, offset, what === 'data' ? SEEK_DATA : SEEK_HOLE, (err: unknown, result: number | bigint) => {
      if (err !== null && err !== undefined) {
        reject(asyncError('lseek', err));
        return;
      }
      const at = Number(result);
      if (at >= 0) {
        resolve(at);
        return;
      }
      const code = errnoNameOfNumber(koffi.errno());
      if (code === 'ENXIO') resolve(null);
      else reject(BlksnapError.of(code, `lseek(${what === 'data' ? 'SEEK_DATA' : 'SEEK_HOLE'}) at ${offset}: ${code}`));
    });
  }));
}

/**
 * fallocate(2) with a mode (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, or
 * FALLOC_FL_ZERO_RANGE) off the event loop: a block device zeroes or discards, which
 * waits for the device.
 */
export function fallocateModeAsync(fd: number, mode: number, offset: number, length: number): Promise<void> {
  return inAsyncTurn(() => new Promise((resolve, reject) => {
    fallocateFn.async(fd, mode, offset, length, (err: unknown, result: number) => {
      if (err !== null && err !== undefined) {
        reject(asyncError('fallocate', err));
      } else if (result !== 0) {
        const code = errnoNameOfNumber(koffi.errno());
        reject(BlksnapError.of(code, `fallocate(mode ${mode}) at ${offset}+${length}: ${code}`));
      } else {
        resolve();
      }
    });
  }));
}

/** Take an exclusive lock without waiting; false when another open file holds it. */
export function tryLockExclusive(fd: number): boolean {
  if (flockFn(fd, LOCK_EX | LOCK_NB) === 0) return true;
  const errno = koffi.errno();
  if (errno === osConstants.errno.EWOULDBLOCK) return false;
  return fail('flock');
}

export function unlock(fd: number): void {
  flockFn(fd, LOCK_UN);
}

/** The size in bytes of the block device open at fd, from the kernel. */
export function blockDeviceSize(fd: number): number {
  const out: [bigint] = [0n];
  if (ioctlU64Fn(fd, BLKGETSIZE64, out) !== 0) fail('ioctl(BLKGETSIZE64)');
  return Number(out[0]);
}

/** The logical sector size of the block device open at fd (what its fallocate must be aligned to). */
export function logicalBlockSize(fd: number): number {
  const out: [number] = [0];
  if (ioctlIntFn(fd, BLKSSZGET, out) !== 0) fail('ioctl(BLKSSZGET)');
  return out[0];
}

/** What a loop device reads and writes: its backing file's st_dev, st_ino and st_rdev. */
export interface LoopBacking {
  dev: number;
  ino: number;
  rdev: number;
}

/**
 * LOOP_GET_STATUS64 on an open loop device, on a worker thread (the kernel stats the
 * backing file, which may sit on our own mount). null when the device is not bound or
 * the call fails.
 */
export function loopBacking(fd: number): Promise<LoopBacking | null> {
  const info = Buffer.alloc(LOOP_INFO64_BYTES);
  return new Promise((resolve) => {
    ioctlBufferFn.async(fd, LOOP_GET_STATUS64, info, (err: unknown, result: number) => {
      if ((err !== null && err !== undefined) || result !== 0) {
        resolve(null);
        return;
      }
      resolve({
        dev: Number(info.readBigUInt64LE(0)),
        ino: Number(info.readBigUInt64LE(8)),
        rdev: Number(info.readBigUInt64LE(16)),
      });
    });
  });
}

/** The memory address of a Buffer's first byte. */
export function addressOf(buf: Buffer): bigint {
  return koffi.address(buf);
}
