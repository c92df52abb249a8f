/**
 * The I/O under a backup: byte ranges cut into pieces, pieces read ahead in order
 * (a few positional reads in flight, so a FUSE image and a local file both stay busy),
 * sparse writes, the lock that keeps two runs off one target, and a copy-on-write
 * clone of the previous image.
 */
import { spawn } from 'node:child_process';
import { promises as fsp, type promises } from 'node:fs';
import { BlksnapError } from '../errors.js';
import { readFully, writeFully } from '../storage/io.js';
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

export interface Piece {
  position: number;
  data: Buffer;
}

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

/**
 * Read `pieces` from `file` in order, with up to `depth` reads in flight. `check` runs
 * before each piece is handed out (it throws to stop, e.g. on Ctrl-C).
 */
export async function* readAhead(file: Handle, pieces: Iterable<Interval>, check: () => void, depth = READ_AHEAD): AsyncGenerator<Piece> {
  const source = pieces[Symbol.iterator]();
  const queue: Array<Promise<Piece>> = [];
  const fill = (): void => {
    while (queue.length < depth) {
      const next = source.next();
      if (next.done === true) return;
      const { offset, length } = next.value;
      const data = Buffer.allocUnsafe(length);
      const read = readFully(file, data, 0, length, offset).then(() => ({ position: offset, data }));
      read.catch(() => undefined); // a read queued behind a failure must not become an unhandled rejection
      queue.push(read);
    }
  };
  fill();
  for (let head = queue.shift(); head !== undefined; head = queue.shift()) {
    const piece = await head;
    check();
    fill();
    yield piece;
  }
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

/**
 * Hold TARGET.lock (flock) for the life of the returned handle. With `optional`, a
 * directory we may not write (a read-only backup medium) means no lock, not an error.
 */
export async function lockTarget(paths: BackupPaths, optional = false): Promise<Handle | null> {
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
  return fh;
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
