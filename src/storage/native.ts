/**
 * The few system calls Node's fs lacks, through koffi (an FFI that ships prebuilt
 * binaries, so nothing is compiled at install): fallocate for preallocation, flock for
 * ownership of a file, ioctl(BLKGETSIZE64) for the size of a block device,
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

const LOCK_EX = 2;
const LOCK_NB = 4;
const LOCK_UN = 8;
const BLKGETSIZE64 = 0x80081272;
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
