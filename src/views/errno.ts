/**
 * The one place where thrown errors become the negative errno numbers FUSE replies
 * with. Anything that is not a BlksnapError (a bug, or an fs error we did not wrap)
 * becomes EIO, never a crash of the daemon.
 */
import { BlksnapError, errnoNameOf, errnoNumber } from '../errors.js';

export function toNegativeErrno(err: unknown): number {
  if (err instanceof BlksnapError) return -err.errno;
  return -errnoNumber(errnoNameOf(err));
}

