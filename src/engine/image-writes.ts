/**
 * Writes to a snapshot image: into the snapshot's private chunks (private-chunks.ts),
 * never into the origin or a saved copy that other snapshots share.
 *
 * One image write, as the data flows:
 *   1. space: one slot for every chunk it touches that has no private copy yet, all
 *      or none (no space: ENOSPC, the slots taken so far go back, nothing changed; a
 *      failed write does not eat the space origin writes need for their copies).
 *   2. copies: for each such chunk, under that chunk's queue (so at most one copy per
 *      (snapshot, chunk); a racer that made it first gets the spare slot back): read
 *      the chunk as the snapshot sees it (its saved copy, or the origin, read as a
 *      registered origin reader exactly like an image read, see chunk-copy.ts), write
 *      the whole chunk into the slot, record it. All chunks at once. If one fails (a
 *      read error), the write fails with that error and none of its bytes are written:
 *      the snapshot stays valid (a copy made for another chunk holds exactly what the
 *      image already showed). No snapshot is corrupted for lack of space here.
 *   3. data: write the caller's bytes into each private slot (under the chunk's queue;
 *      read-modify-write of the aligned blocks a partial write only covers).
 *      A failure here leaves the slot's bytes unknown: the snapshot is corrupted (EIO).
 *
 * Why a racing origin write cannot leak into the image: the copy reads the origin only
 * when the snapshot's chunk is still there (not saved through the snapshot), and it
 * registers as the chunk's origin reader in the same synchronous span as that decision;
 * an origin write to the chunk saves its copy first and then waits for such readers
 * before it writes. So the private copy holds the snapshot's old data, and the image
 * write lands on top of it.
 */
import { BlksnapError } from '../errors.js';
import type { OriginDevice } from '../storage/origin-device.js';
import type { ExceptionStore } from './exception-store.js';
import { chunkPieces } from './geometry.js';
import { AlignedBufferPool, alignDown, alignUp } from '../storage/aligned.js';
import type { ChunkCopies } from './chunk-copy.js';
import type { Snapshot } from './snapshot.js';

/** Memory allowed for private copies being made at once. */
const PRIVATE_COPY_POOL_BYTES = 16 * 1024 * 1024;

export interface ImageWriteParts {
  origin: OriginDevice;
  /** Where the private copies go (exception-store.ts). */
  store: ExceptionStore;
  chunkSize: number;
  originSize: number;
  /** Where a snapshot finds a chunk now (saved copy or origin, with reader registration). */
  sources: ChunkCopies;
  /** Aligned window buffers for partial-block writes (shared with image reads). */
  windows: AlignedBufferPool;
  /** `slot` is about to hold new data: forget whatever caches hold of its previous life. */
  slotReused(slot: number): void;
  /** The snapshot's private data can no longer be vouched for. Must not throw. */
  corrupt(snap: Snapshot, err: unknown, what: string): void;
}

export class ImageWrites {
  /** Whole-chunk buffers for making private copies; made at the first image write. */
  private chunkPool: AlignedBufferPool | null = null;

  constructor(private readonly parts: ImageWriteParts) {}

  /**
   * Write buf[offset, offset + length) at `position` of the image of `snap`. The caller
   * checked the range, the mode and the snapshot's state, and holds the snapshot.
   */
  async write(snap: Snapshot, buf: Buffer, offset: number, length: number, position: number): Promise<void> {
    const pieces = chunkPieces(this.parts.chunkSize, position, length);
    // 1. and 2.: every chunk gets its private copy first, or nothing of the write happens.
    const missing = pieces.filter((p) => snap.privateChunks.slotOf(p.chunk) < 0);
    if (missing.length > 0) {
      const slots = await this.reserve(missing.length);
      const copies = await Promise.allSettled(missing.map((p, i) => this.ensurePrivate(snap, p.chunk, slots[i] ?? -1)));
      for (const outcome of copies) if (outcome.status === 'rejected') throw outcome.reason;
    }
    // 3. the data, all chunks at once; every piece settles before we answer.
    const writes = await Promise.allSettled(pieces.map((p) => (
      snap.privateChunks.exclusive(p.chunk, () => this.writeInto(snap, p.chunk, p.inChunk, p.length, buf, offset + p.done))
    )));
    for (const outcome of writes) if (outcome.status === 'rejected') throw outcome.reason;
  }

  /**
   * `n` slots, or none: ENOSPC (or the storage's error) with every slot taken so far
   * given back. Taken before any origin reader registers: waiting for automatic growth
   * must not hold back an origin write.
   */
  private async reserve(n: number): Promise<number[]> {
    const slots: number[] = [];
    try {
      // In runs where the allocator has them, so that later reads of these chunks are runs too.
      while (slots.length < n) {
        const run = await this.parts.store.prepareRun(n - slots.length);
        for (let i = 0; i < run.count; i++) slots.push(run.slot + i);
      }
    } catch (err) {
      for (const slot of slots) this.parts.store.drop(slot);
      throw err;
    }
    return slots;
  }

  /**
   * Make the snapshot's private copy of `chunk` in the reserved `slot`, unless a write
   * queued before this one made it already (single flight per chunk): then, and on
   * failure, the slot goes back.
   */
  private ensurePrivate(snap: Snapshot, chunk: number, slot: number): Promise<void> {
    const table = snap.privateChunks;
    const { store } = this.parts;
    return table.exclusive(chunk, async () => {
      if (table.slotOf(chunk) >= 0) {
        store.drop(slot);
        return;
      }
      try {
        this.parts.slotReused(slot);
        const pool = (this.chunkPool ??= new AlignedBufferPool(
          this.parts.chunkSize,
          Math.max(1, Math.min(8, Math.floor(PRIVATE_COPY_POOL_BYTES / this.parts.chunkSize))),
        ));
        const whole = await pool.acquire();
        try {
          await this.readSnapshotView(snap, chunk, whole);
          await store.commit(slot, whole);
        } finally {
          pool.release(whole);
        }
      } catch (err) {
        // Not recorded: the image still shows the snapshot's view from where it was.
        store.drop(slot);
        throw err;
      }
      table.record(chunk, slot);
    });
  }

  /** The whole of `chunk` as `snap` sees it, into an aligned chunk buffer. */
  private async readSnapshotView(snap: Snapshot, chunk: number, into: Buffer): Promise<void> {
    const { sources, store, origin, chunkSize, originSize } = this.parts;
    // Decision and reader registration in one synchronous call (see chunk-copy.ts).
    const source = sources.startRead(chunk, snap.seq);
    switch (source.from) {
      case 'saved':
        await store.read(source.slot, 0, chunkSize, into);
        return;
      case 'hole':
        into.fill(0);
        return;
      case 'origin': {
        const start = chunk * chunkSize;
        const length = Math.min(chunkSize, originSize - start);
        try {
          await origin.read(into, 0, length, start);
        } finally {
          sources.doneReading(chunk);
        }
        if (length < chunkSize) into.fill(0, length);
        return;
      }
      case 'lost':
        throw BlksnapError.of('EIO', `snapshot ${snap.name} lost chunk ${chunk}`);
    }
  }

  /**
   * The caller's bytes into the private slot of `chunk`, window by window; a window the
   * write covers only in part is read first (O_DIRECT writes whole aligned blocks).
   */
  private async writeInto(snap: Snapshot, chunk: number, inChunk: number, length: number, buf: Buffer, offset: number): Promise<void> {
    const { store, windows } = this.parts;
    const slot = snap.privateChunks.slotOf(chunk);
    if (slot < 0) throw new Error(`bug: chunk ${chunk} of snapshot ${snap.name} has no private copy`);
    const size = windows.bufferSize;
    const end = inChunk + length;
    try {
      for (let window = Math.floor(inChunk / size) * size; window < end; window += size) {
        const from = Math.max(inChunk, window);
        const to = Math.min(end, window + size);
        const first = alignDown(from);
        const last = alignUp(to);
        const tmp = await windows.acquire();
        try {
          if (first < from || last > to) await store.read(slot, first, last - first, tmp);
          buf.copy(tmp, from - first, offset + (from - inChunk), offset + (to - inChunk));
          await store.commitPart(slot, first, last - first, tmp);
        } finally {
          windows.release(tmp);
        }
      }
    } catch (err) {
      this.parts.corrupt(snap, err, `cannot write chunk ${chunk} of the image`);
      throw BlksnapError.of('EIO', `snapshot ${snap.name}: cannot write chunk ${chunk} of its image`);
    }
  }
}
