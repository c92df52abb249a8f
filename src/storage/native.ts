/**
 * The few system calls Node's fs lacks, through koffi (an FFI that ships prebuilt
 * binaries, so nothing is compiled at install): fallocate for preallocation, flock for
 * ownership of a file, ioctl(BLKGETSIZE64) for the size of a block device, and the
 * address of a Buffer so we can hand O_DIRECT a properly aligned slice.
 */
import koffi from 'koffi';
import { BlksnapError, errnoNameOfNumber } from '../errors.js';
import { constants as osConstants } from 'node:os';

const libc = koffi.load('libc.so.6');
const fallocateFn = libc.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)');
// Returns the error number instead of setting errno, so it can run on koffi's worker threads.
const posixFallocateFn = libc.func('int posix_fallocate(int fd, int64_t offset, int64_t len)');
const flockFn = libc.func('int flock(int fd, int operation)');
const ioctlU64Fn = libc.func('int ioctl(int fd, unsigned long request, _Out_ uint64_t *out)');

const LOCK_EX = 2;
const LOCK_NB = 4;
const LOCK_UN = 8;
const BLKGETSIZE64 = 0x80081272;

function fail(what: string): never {
  const errno = koffi.errno();
  const code = errnoNameOfNumber(errno);
  throw BlksnapError.of(code, `${what}: ${code}`);
}

/** Reserve `length` bytes at `offset` (mode 0: the file grows to cover them). */
export function fallocate(fd: number, offset: number, length: number): void {
  if (fallocateFn(fd, 0, offset, length) !== 0) fail('fallocate');
}

/**
 * fallocate off the event loop (on a koffi worker thread): growing the difference
 * storage while snapshots are held must not stall the requests being served.
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

/** The memory address of a Buffer's first byte. */
export function addressOf(buf: Buffer): bigint {
  return koffi.address(buf);
}
