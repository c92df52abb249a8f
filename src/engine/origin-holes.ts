/**
 * Whether a chunk of the origin is wholly a hole, for the copy-on-write: such a chunk
 * reads as zeros, so its copy needs no read, no slot and no O_DIRECT write; it is
 * recorded as a hole (copy-table.ts `HOLE_SLOT`) and the image keeps reporting it as
 * one. A VM writing new files into the free space of a thin image then pays no
 * copy-on-write at all.
 *
 * Asked inside the chunk's copy (chunk-copy.ts, single flight): every write to the
 * chunk waits for that copy, so the origin's answer cannot change before the copy is
 * recorded. A copy run asks once for all its chunks (`holeChunks`): a SEEK_DATA and a
 * SEEK_HOLE per stretch of data in the run. When the origin cannot say (the lseek fails), the chunk is copied as usual:
 * a hole copied as data costs space, never correctness. For the same reason an origin
 * that is wholly allocated as last seen (a block device, a dense image file; the figure
 * is refreshed at every take and punch through the mount) is not asked at all: its
 * first writes pay no extra system call.
 */
import type { OriginDevice } from '../storage/origin-device.js';

/**
 * Which of the `count` chunks from `first` on are wholly holes (1) or not (0), for a copy
 * run; null when none is, or the origin cannot say. Synchronously null (no promise, no
 * system call) for an origin wholly allocated as last seen.
 */
export function holeChunks(origin: OriginDevice, first: number, count: number, chunkSize: number): Promise<Uint8Array | null> | null {
  if (origin.allocatedBytes >= origin.size) return null;
  return findHoleChunks(origin, first, count, chunkSize);
}

async function findHoleChunks(origin: OriginDevice, first: number, count: number, chunkSize: number): Promise<Uint8Array | null> {
  const start = first * chunkSize;
  const end = Math.min(origin.size, (first + count) * chunkSize);
  let holes: Uint8Array | null = null;
  try {
    for (let pos = start; pos < end;) {
      const data = await origin.seekData(pos);
      const holeEnd = data === null ? end : Math.min(end, data);
      // The chunks wholly inside the hole [pos, holeEnd).
      for (let i = Math.ceil((pos - start) / chunkSize); i < count; i++) {
        const chunkEnd = Math.min(end, start + (i + 1) * chunkSize);
        if (chunkEnd > holeEnd) break;
        (holes ??= new Uint8Array(count))[i] = 1;
      }
      if (data === null || data >= end) break;
      pos = await origin.seekHole(data);
    }
  } catch {
    return null; // copied as data: space, never correctness
  }
  return holes;
}
