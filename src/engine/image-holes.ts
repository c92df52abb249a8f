/**
 * SEEK_DATA and SEEK_HOLE on a snapshot image, exact for the snapshot: a range reported
 * as a hole reads as zeros in that image, whatever the origin does meanwhile.
 *
 * Per chunk, where the image's bytes come from decides:
 *   a private copy of the snapshot (image writes)   -> data
 *   a saved copy serving the snapshot                -> data
 *   saved as a hole (copy-table.ts HOLE_SLOT)        -> hole
 *   the origin still holds it                        -> the origin's own holes inside it
 *   its copy failed                                  -> EIO (the snapshot is corrupted)
 *
 * Chunks still on the origin are asked about under the same registration image reads
 * use (chunk-copy.ts `startRead`): the decision "the origin holds it" and the reader's
 * registration are one synchronous call, and a write or a punch of such a chunk saves
 * it first and then waits for its registered readers before it changes the origin. So
 * while the origin's lseek runs, those chunks hold exactly the snapshot's bytes: a
 * copy-on-write or a punch racing the seek can never make a range that held data at
 * the take look like a hole. A run of consecutive origin chunks (at most RUN_CHUNKS) is
 * registered together and asked about with one lseek of the origin.
 */
import { BlksnapError } from '../errors.js';
import type { OriginDevice } from '../storage/origin-device.js';
import type { SeekWhat } from '../storage/native.js';
import type { ChunkCopies } from './chunk-copy.js';
import type { Geometry } from './geometry.js';
import type { Snapshot } from './snapshot.js';

/** Origin chunks registered for one lseek of the origin (writes to them wait that long). */
const RUN_CHUNKS = 1024;
/** Chunks looked at between two turns of the event loop (a 16 TiB image has 2M chunks). */
const CHUNKS_PER_TURN = 65536;

export interface ImageHoleParts {
  origin: OriginDevice;
  geometry: Geometry;
  /** Where a snapshot finds a chunk now (saved copy, hole, or origin with reader registration). */
  sources: ChunkCopies;
}

/** What one chunk of an image is, for a seek; 'origin' means its reader is registered now. */
type ChunkKind = 'data' | 'hole' | 'origin';

export class ImageHoles {
  constructor(private readonly parts: ImageHoleParts) {}

  /**
   * SEEK_DATA (`data`): the first byte at or after `offset` that is data in the image of
   * `snap`, or null when only holes follow. SEEK_HOLE (`hole`): the first byte at or
   * after `offset` in a hole; the end of the image counts as one. The caller checked
   * that `offset` lies inside the image and that the snapshot is not corrupted.
   */
  async seek(snap: Snapshot, offset: number, what: SeekWhat): Promise<number | null> {
    const { origin, geometry, sources } = this.parts;
    const size = geometry.originSize;
    const cs = geometry.chunkSize;
    let pos = offset;
    let looked = 0;
    while (pos < size) {
      if (++looked % CHUNKS_PER_TURN === 0) await new Promise((resolve) => setImmediate(resolve));
      const first = Math.floor(pos / cs);
      const kind = this.kindOf(snap, first);
      if (kind !== 'origin') {
        if (kind === what) return pos;
        pos = (first + 1) * cs;
        continue;
      }
      // `first` is registered; register the origin chunks that follow it, up to RUN_CHUNKS.
      let end = first + 1;
      try {
        while (end < geometry.chunkCount && end - first < RUN_CHUNKS && this.kindOf(snap, end, true) === 'origin') end++;
        const runEnd = Math.min(size, end * cs);
        const found = what === 'data' ? await origin.seekData(pos) : await origin.seekHole(pos);
        if (found !== null && found < runEnd) return found;
        pos = runEnd;
      } finally {
        for (let c = first; c < end; c++) sources.doneReading(c);
      }
    }
    return what === 'data' ? null : size;
  }

  /**
   * What `chunk` of the image of `snap` is now; for 'origin' the caller is registered as
   * its reader (call `doneReading`). With `peek`, a lost chunk is reported as data
   * (it ends a run; the next look at it throws).
   */
  private kindOf(snap: Snapshot, chunk: number, peek = false): ChunkKind {
    if (snap.privateChunks.slotOf(chunk) >= 0) return 'data';
    // Decision and reader registration in one synchronous call (see chunk-copy.ts).
    const source = this.parts.sources.startRead(chunk, snap.seq);
    switch (source.from) {
      case 'saved': return 'data';
      case 'hole': return 'hole';
      case 'origin': return 'origin';
      case 'lost':
        if (peek) return 'data';
        throw BlksnapError.of('EIO', `snapshot ${snap.name} lost chunk ${chunk}`);
    }
  }
}
