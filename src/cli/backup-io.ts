/**
 * The I/O under a backup: byte ranges cut into pieces (read ahead, without their
 * holes, by backup-extents.ts: a few positional reads in flight, so a FUSE image and a
 * local file both stay busy), sparse writes, the lock that keeps two runs off one target, and a copy-on-write
 * clone of the previous image.
 */
import { spawn } from 'node:child_process';
import { promises as fsp, type promises } from 'node:fs';
import { BlksnapError } from '../errors.js';
import { writeFully } from '../storage/io.js';
import { tryLockExclusive } from '../storage/native.js';
import type { Interval } from './backup-hash.js';
import type { BackupPaths } from './backup-manifest.js';

type Handle = promises.FileHandle;

/** Pieces are at most this long and never cross a multiple of it. */
export const PIECE_SIZE = 1024 * 1024;
/** Reads in flight at once. */
export const READ_AHEAD = 4;
/** Unit of hole detection in a full backup (the file system block). */
export const SPARSE_UNIT = 4096;

export function* piecesOf(intervals: Iterable<Interval>, pieceSize = PIECE_SIZE): Generator<Interval> {
  for (const iv of intervals) {
    const end = iv.offset + iv.length;
    for (let pos = iv.offset; pos < end;) {
      const next = Math.min(end, (Math.floor(pos / pieceSize) + 1) * pieceSize);
      yield { offset: pos, length: next - pos };
      pos = next;
    }
  }
}

/** Merge touching or overlapping sorted intervals. */
export function mergeIntervals(sorted: Iterable<Interval>): Interval[] {
  const out: Interval[] = [];
  for (const iv of sorted) {
    const last = out[out.length - 1];
    if (last !== undefined && iv.offset <= last.offset + last.length) {
      last.length = Math.max(last.length, iv.offset + iv.length - last.offset);
    } else {
      out.push({ offset: iv.offset, length: iv.length });
    }
  }
  return out;
}

/** Cut intervals so that none is longer than `max`. */
export function splitIntervals(intervals: Iterable<Interval>, max: number): Interval[] {
  const out: Interval[] = [];
  for (const iv of intervals) {
    for (let at = 0; at < iv.length; at += max) out.push({ offset: iv.offset + at, length: Math.min(max, iv.length - at) });
  }
  return out;
}

/** Write only the non-zero SPARSE_UNITs of a piece (the file was truncated to size: the rest stays a hole). */
export async function writeSparse(file: Handle, data: Buffer, position: number): Promise<number> {
  const zero = Buffer.alloc(SPARSE_UNIT);
  let written = 0;
  let runStart = -1;
  const flush = async (end: number): Promise<void> => {
    if (runStart < 0) return;
    await writeFully(file, data, runStart, end - runStart, position + runStart);
    written += end - runStart;
    runStart = -1;
  };
  for (let at = 0; at < data.length; at += SPARSE_UNIT) {
    const end = Math.min(data.length, at + SPARSE_UNIT);
    const isZero = data.compare(zero, 0, end - at, at, end) === 0;
    if (!isZero && runStart < 0) runStart = at;
    if (isZero) await flush(at);
  }
  await flush(data.length);
  return written;
}

/** TARGET.lock, held: `release` removes it (while still holding it) and lets go. */
export interface TargetLock {
  release(): Promise<void>;
}

/**
 * Hold TARGET.lock (flock) until `release`, which removes the file: no lock file
 * outlives the run. Removing a lock file is safe only with a second look: a run that
 * opened the file just before the holder removed it may then lock that removed file,
 * so after locking we check that the path still names the inode we locked, and start
 * again if it does not. With `optional`, a directory we may not write (a read-only
 * backup medium) means no lock, not an error.
 */
export async function lockTarget(paths: BackupPaths, optional = false): Promise<TargetLock | null> {
  for (;;) {
    let fh: Handle;
    try {
      fh = await fsp.open(paths.lock, 'a', 0o644);
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (optional && (code === 'EROFS' || code === 'EACCES' || code === 'EPERM')) return null;
      throw BlksnapError.of('EIO', `cannot create ${paths.lock}: ${err instanceof Error ? err.message : String(err)}`, err);
    }
    if (!tryLockExclusive(fh.fd)) {
      await fh.close();
      throw BlksnapError.of('EBUSY', `another backup or verify of ${paths.target} is running (${paths.lock} is locked)`);
    }
    const [held, named] = await Promise.all([fh.stat(), fsp.stat(paths.lock).catch(() => null)]);
    if (named !== null && named.ino === held.ino && named.dev === held.dev) {
      const lockFile = fh;
      return {
        release: async () => {
          try {
            await fsp.unlink(paths.lock).catch(() => undefined);
          } finally {
            await lockFile.close();
          }
        },
      };
    }
    await fh.close(); // the holder before us removed it: lock the file that is there now
  }
}

/**
 * Copy the previous image to a new file: a reflink where the file system can (btrfs,
 * xfs: instant, no space), otherwise a copy that keeps its holes. cp (coreutils) does
 * both, with SEEK_DATA/SEEK_HOLE, better than a read/write loop would.
 */
export function cloneFile(from: string, to: string): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn('cp', ['--reflink=auto', '--sparse=auto', '--', from, to], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (err) => reject(BlksnapError.of('EIO', `cannot run cp to copy ${from}: ${err.message}`, err)));
    child.on('close', (code, signal) => {
      if (code === 0) resolvePromise();
      else reject(BlksnapError.of('EIO', `cannot copy ${from} to ${to}: ${stderr.trim() || `cp ${signal ?? `exited ${code ?? '?'}`}`}`));
    });
  });
}
