/**
 * Reading a file without reading its holes: SEEK_DATA / SEEK_HOLE split each interval
 * into data and holes; data is read ahead in pieces, holes are handed on as a length of
 * zeros, never read. On a snapshot image that is exact for the snapshot (a hole reads
 * as zeros), so a backup pays for the data, not for the size. Where the file cannot
 * say (fuse-native's mount answers no holes; a file system without SEEK_DATA), the
 * whole interval is data, and is read.
 */
import type { promises } from 'node:fs';
import { BlksnapError } from '../errors.js';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, fallocateModeAsync, seekAsync } from '../storage/native.js';
import { readFully, writeFully } from '../storage/io.js';
import type { Interval } from './backup-hash.js';
import { PIECE_SIZE, READ_AHEAD, piecesOf } from './backup-io.js';

type Handle = promises.FileHandle;

/** A piece of a file in order: `data` read from it, or null for a hole (`length` zeros, not read). */
export interface SparsePiece {
  position: number;
  length: number;
  data: Buffer | null;
}

/** One run of an interval: data or hole. */
interface Run extends Interval {
  hole: boolean;
}

/** The next data at or after `pos` (null: none), or everything is data when the file cannot tell. */
async function nextData(file: Handle, pos: number): Promise<number | null> {
  try {
    return await seekAsync(file.fd, pos, 'data');
  } catch {
    return pos;
  }
}

async function nextHole(file: Handle, pos: number, end: number): Promise<number> {
  try {
    return Math.min(end, (await seekAsync(file.fd, pos, 'hole')) ?? end);
  } catch {
    return end;
  }
}

/** The data and hole runs of sorted, non-overlapping intervals of `file`, in order. */
async function* runsOf(file: Handle, intervals: Iterable<Interval>): AsyncGenerator<Run> {
  for (const iv of intervals) {
    const end = iv.offset + iv.length;
    let pos = iv.offset;
    while (pos < end) {
      const data = await nextData(file, pos);
      if (data === null || data >= end) {
        yield { offset: pos, length: end - pos, hole: true };
        break;
      }
      if (data > pos) yield { offset: pos, length: data - pos, hole: true };
      const hole = Math.max(data + 1, await nextHole(file, data, end));
      yield { offset: data, length: hole - data, hole: false };
      pos = hole;
    }
  }
}

/**
 * The intervals of `file`, in order: data read ahead (pieces of at most PIECE_SIZE, up
 * to `depth` reads in flight), holes as `data: null`. `check` runs before each piece is
 * handed out (it throws to stop, e.g. on Ctrl-C).
 */
export async function* readSparseAhead(file: Handle, intervals: Iterable<Interval>, check: () => void, depth = READ_AHEAD): AsyncGenerator<SparsePiece> {
  const runs = runsOf(file, intervals);
  let pending: Iterator<Interval> | null = null; // data pieces of the current run
  const queue: Array<Promise<SparsePiece>> = [];
  const fill = async (): Promise<void> => {
    while (queue.length < depth) {
      const piece = pending?.next();
      if (piece !== undefined && piece.done !== true) {
        const { offset, length } = piece.value;
        const data = Buffer.allocUnsafe(length);
        const read = readFully(file, data, 0, length, offset).then(() => ({ position: offset, length, data }));
        read.catch(() => undefined); // a read queued behind a failure must not become an unhandled rejection
        queue.push(read);
        continue;
      }
      pending = null;
      const run = await runs.next();
      if (run.done === true) return;
      if (run.value.hole) queue.push(Promise.resolve({ position: run.value.offset, length: run.value.length, data: null }));
      else pending = piecesOf([run.value], PIECE_SIZE)[Symbol.iterator]();
    }
  };
  await fill();
  for (let head = queue.shift(); head !== undefined; head = queue.shift()) {
    const piece = await head;
    check();
    await fill();
    yield piece;
  }
}

const ZEROS = Buffer.alloc(PIECE_SIZE);

/**
 * Make [position, position + length) of a local file read as zeros: punch it (it stays
 * sparse), or write zeros where the file system cannot punch.
 */
export async function zeroRange(file: Handle, position: number, length: number): Promise<void> {
  try {
    await fallocateModeAsync(file.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, position, length);
    return;
  } catch (err) {
    if (!(err instanceof BlksnapError) || (err.code !== 'EOPNOTSUPP' && err.code !== 'ENOTSUP')) throw err;
  }
  for (let done = 0; done < length;) {
    const n = Math.min(ZEROS.length, length - done);
    await writeFully(file, ZEROS, 0, n, position + done);
    done += n;
  }
}
