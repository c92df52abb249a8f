/**
 * lseek(SEEK_DATA / SEEK_HOLE) and fallocate(2) as the views see them: the numbers a
 * request carries, the checks every file makes the same way, and the answer of a file
 * that has no holes.
 *
 * The kernel answers SEEK_SET, SEEK_CUR and SEEK_END itself; only SEEK_DATA and
 * SEEK_HOLE reach the daemon. It also refuses fallocate on a file not open for
 * writing, and a punch without KEEP_SIZE, before asking. Neither request may ever be
 * answered ENOSYS: the kernel would then stop asking for the whole mount.
 */
import { BlksnapError } from '../errors.js';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, type SeekWhat } from '../storage/native.js';
import type { ZeroKind } from '../storage/origin-device.js';

export type { SeekWhat } from '../storage/native.js';

export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;

/** What an lseek request asks for. */
export function seekWhat(whence: number): SeekWhat {
  if (whence === SEEK_DATA) return 'data';
  if (whence === SEEK_HOLE) return 'hole';
  throw BlksnapError.of('EINVAL', `lseek whence ${whence} is not SEEK_DATA or SEEK_HOLE`);
}

/** ENXIO for a seek at or past the end: what lseek(2) says there, for both kinds. */
export function checkSeekOffset(size: number, offset: number): void {
  if (offset < 0 || offset >= size) throw BlksnapError.of('ENXIO', `seek at ${offset}: the file has ${size} bytes`);
}

/** The answer of a file with no holes: data up to the end, the hole at the end. */
export function seekWithoutHoles(size: number, offset: number, what: SeekWhat): number {
  checkSeekOffset(size, offset);
  return what === 'data' ? offset : size;
}

/** The answer of a file with holes from what its owner found (null: only holes follow). */
export function seekAnswer(found: number | null, offset: number): number {
  if (found === null) throw BlksnapError.of('ENXIO', `no data at or after ${offset}`);
  return found;
}

/** One fallocate request on a fixed-size file, checked: what to do, and where. */
export interface ZeroRange {
  kind: ZeroKind;
  offset: number;
  length: number;
}

/**
 * Check a fallocate on a file of `size` bytes that never grows, with a block device's
 * rules (blkdev_fallocate): PUNCH_HOLE|KEEP_SIZE and ZERO_RANGE (with or without
 * KEEP_SIZE) are done; any other mode is EOPNOTSUPP. A range that starts at or past the
 * end is EINVAL; one that runs past it is cut at the end with KEEP_SIZE, and EINVAL
 * without (the file would have to grow).
 */
export function checkFallocate(mode: number, offset: number, length: number, size: number, what: string): ZeroRange {
  let kind: ZeroKind;
  if (mode === (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)) kind = 'punch';
  else if (mode === FALLOC_FL_ZERO_RANGE || mode === (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)) kind = 'zero';
  else throw BlksnapError.of('EOPNOTSUPP', `${what} supports fallocate with PUNCH_HOLE|KEEP_SIZE or ZERO_RANGE only (mode ${mode})`);
  if (offset < 0 || length <= 0 || offset >= size) {
    throw BlksnapError.of('EINVAL', `fallocate range ${offset}+${length} does not start inside ${what} (${size} bytes)`);
  }
  if (offset + length > size) {
    if ((mode & FALLOC_FL_KEEP_SIZE) === 0) throw BlksnapError.of('EINVAL', `fallocate range ${offset}+${length} runs past the end of ${what} (${size} bytes), which never grows`);
    return { kind, offset, length: size - offset };
  }
  return { kind, offset, length };
}
