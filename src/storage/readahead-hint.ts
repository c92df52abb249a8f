/**
 * posix_fadvise(POSIX_FADV_WILLNEED) through koffi (Node's fs has no fadvise): ask the
 * kernel to start reading a range of a buffered file into the page cache now. Advice
 * only: it never changes what a later read returns, and errors are ignored.
 */
import koffi from 'koffi';

const libc = koffi.load('libc.so.6');
const posixFadvise = libc.func('int posix_fadvise(int fd, int64_t offset, int64_t len, int advice)');
const POSIX_FADV_WILLNEED = 3;

export function willNeed(fd: number, offset: number, length: number): void {
  if (length > 0) posixFadvise(fd, offset, length, POSIX_FADV_WILLNEED);
}
