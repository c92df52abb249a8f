/**
 * Whether a chunk of the origin is wholly a hole, for the copy-on-write: such a chunk
 * reads as zeros, so its copy needs no read, no slot and no O_DIRECT write; it is
 * recorded as a hole (copy-table.ts `HOLE_SLOT`) and the image keeps reporting it as
 * one. A VM writing new files into the free space of a thin image then pays no
 * copy-on-write at all.
 *
 * Asked inside the chunk's copy (chunk-copy.ts, single flight): every write to the
 * chunk waits for that copy, so the origin's answer cannot change before the copy is
 * recorded. When the origin cannot say (the lseek fails), the chunk is copied as usual:
 * a hole copied as data costs space, never correctness. For the same reason an origin
 * that is wholly allocated as last seen (a block device, a dense image file; the figure
 * is refreshed at every take and punch through the mount) is not asked at all: its
 * first writes pay no extra system call.
 */
import type { OriginDevice } from '../storage/origin-device.js';

/** true when [start, start + length) of the origin holds no data (its own SEEK_DATA says so). */
export async function wholeChunkIsHole(origin: OriginDevice, start: number, length: number): Promise<boolean> {
  if (origin.allocatedBytes >= origin.size) return false;
  try {
    const data = await origin.seekData(start);
    return data === null || data >= start + length;
  } catch {
    return false;
  }
}
