/**
 * One error class for the whole daemon, carrying an errno name. Every layer throws
 * BlksnapError; the views turn its code into the negative errno FUSE expects, and the
 * CLI prints its message as the one line a user sees.
 *
 * @example
 *   throw BlksnapError.of('ENOSPC', 'difference storage is full');
 */
import { constants as osConstants } from 'node:os';

export type ErrnoName =
  | 'EPERM' | 'ENOENT' | 'EIO' | 'EBADF' | 'EAGAIN' | 'ENOMEM' | 'EACCES' | 'EBUSY'
  | 'EEXIST' | 'EXDEV' | 'ENODEV' | 'ENOTDIR' | 'EISDIR' | 'EINVAL' | 'EFBIG' | 'ENOSPC'
  | 'EROFS' | 'ENAMETOOLONG' | 'ENOSYS' | 'ENOTEMPTY' | 'ENOTSUP' | 'EINTR' | 'ENOTBLK'
  | 'ENXIO' | 'ETIMEDOUT' | 'ESHUTDOWN' | 'EOVERFLOW' | 'ESTALE' | 'EOPNOTSUPP';

const errnoNumbers = osConstants.errno as Record<string, number | undefined>;

export class BlksnapError extends Error {
  readonly code: ErrnoName;

  constructor(code: ErrnoName, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'BlksnapError';
    this.code = code;
  }

  /** The positive errno number (e.g. 28 for ENOSPC). */
  get errno(): number {
    return errnoNumbers[this.code] ?? errnoNumbers['EIO'] ?? 5;
  }

  static of(code: ErrnoName, message: string, cause?: unknown): BlksnapError {
    return cause === undefined ? new BlksnapError(code, message) : new BlksnapError(code, message, { cause });
  }
}

/**
 * Node's fs errors carry `code`; keep it when it is an errno name we know. libuv has no
 * name for some errno values (ESTALE: "Unknown system error -116"), so the number in
 * `errno` is looked up too.
 */
export function errnoNameOf(err: unknown): ErrnoName {
  if (err instanceof BlksnapError) return err.code;
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && code in errnoNumbers) return code as ErrnoName;
  const errno = (err as { errno?: unknown } | null)?.errno;
  if (typeof errno === 'number' && errno !== 0) return errnoNameOfNumber(Math.abs(errno));
  return 'EIO';
}

/** Wrap any thrown value as a BlksnapError, prefixing a description of what failed. */
export function asBlksnapError(err: unknown, what: string): BlksnapError {
  if (err instanceof BlksnapError) return err;
  const code = errnoNameOf(err);
  // Node says "ENOENT: no such file or directory, open '/x'"; the caller already named
  // the path, so keep only the reason.
  const raw = err instanceof Error ? err.message : String(err);
  const reason = raw.replace(/^[A-Z]+: /, '').replace(/, \w+ '.*'$/, '');
  return BlksnapError.of(code, `${what}: ${reason}`, err);
}

/** The errno name of a positive errno number (EIO when it is not one we name). */
export function errnoNameOfNumber(errno: number): ErrnoName {
  for (const [name, value] of Object.entries(errnoNumbers)) {
    if (value === errno) return name as ErrnoName;
  }
  return 'EIO';
}

/** The positive errno number of an errno name. */
export function errnoNumber(code: ErrnoName): number {
  return errnoNumbers[code] ?? 5;
}
