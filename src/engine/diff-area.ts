/**
 * The per-origin part of the engine (blksnap's diff area): the origin's write gate,
 * the copy-on-write of its chunks, where each image read comes from, and snapshots'
 * private image copies, all over one exception store (exception-store.ts). It knows
 * snapshots only as sequence numbers and `Snapshot` objects handed to it; names,
 * references and their events are the registry's (snapshot-registry.ts).
 *
 * A write to the origin, as the data flows:
 *   gate.enter -> the chunks a live snapshot still needs are saved once, adjacent ones
 *   as one run (chunk-copy.ts: single-flight per chunk: one origin read of the run ->
 *   slots in a row -> one O_DIRECT write -> each chunk recorded for the snapshots in
 *   (its savedThrough, newest]; on failure corrupt exactly those that needed a lost
 *   chunk and go on) -> every run settled -> wait for image readers still reading
 *   those chunks from the origin -> mark the change map -> write the origin ->
 *   gate.leave.
 * The origin write happens whatever became of the copy: the origin never pays for a
 * snapshot's trouble. A punch or a zeroing of the origin (fallocate) is the same path
 * with fallocate in place of the write; a chunk that is wholly a hole when it would be
 * copied is saved as a hole (origin-holes.ts): no read, no slot.
 *
 * What guards what:
 * - `gate` (write-barrier.ts) admits origin writes. Held closed by a take (`quiesce`)
 *   and by /control freeze (`freezer`), it protects the newest live sequence number a
 *   write copies for: no snapshot is taken while a write is between deciding what to
 *   copy and writing the origin, so every snapshot sees each write wholly or not at all.
 * - Each chunk's copy is single-flight (chunk-copy.ts): at most one run in flight holds
 *   a chunk; later writes join it or wait for it.
 * - Origin readers (origin-readers.ts) protect image reads that fetch a chunk from the
 *   origin: a write to that chunk waits for them after its copy and before its write.
 * - Each snapshot's private chunks (private-chunks.ts) are changed under a per-chunk
 *   queue: one image write of a chunk at a time.
 * - The native fast path (fast-path-state.ts), once attached: C writers pass the same
 *   gate, and a write publishes its chunks as needing no copy once prepareWrite has
 *   settled, from inside the gate.
 */
import type { OriginDevice, ZeroKind } from '../storage/origin-device.js';
import type { SeekWhat } from '../storage/native.js';
import { AlignedBufferPool } from '../storage/aligned.js';
import type { ChangeTracker } from './change-tracker.js';
import { ChunkCopies } from './chunk-copy.js';
import type { EventQueue } from './event-queue.js';
import type { ExceptionStore } from './exception-store.js';
import { FastPathState } from './fast-path-state.js';
import type { Geometry } from './geometry.js';
import { ImageHoles } from './image-holes.js';
import { ImageReads } from './image-reads.js';
import { ImageWrites } from './image-writes.js';
import type { Logger } from './logger.js';
import { OriginFreeze } from './origin-freeze.js';
import type { LiveSnapshots } from './snapshot-registry.js';
import type { Snapshot } from './snapshot.js';
import { WriteBarrier } from './write-barrier.js';

/** Memory allowed for copy runs in flight (bounds concurrent copy-on-write). */
const COPY_POOL_BYTES = 64 * 1024 * 1024;
/**
 * Longest copy run: one 1 MiB request of the kernel (max_write) is one run at 64 KiB
 * chunks; larger writes are cut into runs of this size, copied side by side.
 */
const COPY_RUN_BYTES = 1024 * 1024;

export interface DiffAreaParts {
  origin: OriginDevice;
  store: ExceptionStore;
  geometry: Geometry;
  tracker: ChangeTracker;
  events: EventQueue;
  log: Logger;
  /** The snapshots that still need data (the registry). */
  snapshots: LiveSnapshots;
  /** Throws ESHUTDOWN unless the engine is open (checked again by a write that waited at the gate). */
  checkOpen(what: string): void;
}

/**
 * Run buffers: whole chunks, COPY_RUN_BYTES (or one chunk, if larger) each, at most
 * COPY_POOL_BYTES in all, made when first needed (a 4 KiB first touch touches only its
 * chunk's pages of one).
 */
function copyRunPool(chunkSize: number): AlignedBufferPool {
  const size = Math.max(chunkSize, Math.floor(COPY_RUN_BYTES / chunkSize) * chunkSize);
  return new AlignedBufferPool(size, Math.max(2, Math.floor(COPY_POOL_BYTES / size)), { lazy: true });
}

export class DiffArea {
  /** Origin writes pass it; a take or a freeze holds it closed (see the header). */
  private readonly gate = new WriteBarrier();
  /** /control freeze and thaw: a caller-held close of the same gate. */
  readonly freezer: OriginFreeze;
  private readonly chunks: ChunkCopies;
  private readonly imageReads: ImageReads;
  private readonly imageWrites: ImageWrites;
  private readonly imageHoles: ImageHoles;
  /** The native fast path's shared state, once a transport serves from it. */
  private fast: FastPathState | null = null;

  constructor(private readonly parts: DiffAreaParts) {
    const { origin, store, geometry, snapshots } = parts;
    const chunk = geometry.chunkSize;
    this.freezer = new OriginFreeze(this.gate, parts.events, parts.log);
    // Called only once writes run, when every part below exists: the image reads' caches
    // must forget a slot that is about to hold new data.
    const slotReused = (slot: number): void => this.imageReads.slotReused(slot);
    this.chunks = new ChunkCopies({
      origin,
      store,
      chunkSize: chunk,
      originSize: geometry.originSize,
      pool: copyRunPool(chunk),
      slotReused,
      needed: (lo, hi) => snapshots.anyLiveIn(lo, hi),
      ownedByAll: (c, lo, hi) => snapshots.ownedByAllIn(c, lo, hi),
      failed: (lo, hi, err, what) => snapshots.corruptRange(lo, hi, err, what),
    });
    this.imageReads = new ImageReads({ origin, store, geometry, sources: this.chunks });
    this.imageHoles = new ImageHoles({ origin, geometry, sources: this.chunks });
    this.imageWrites = new ImageWrites({
      origin,
      store,
      chunkSize: chunk,
      originSize: geometry.originSize,
      sources: this.chunks,
      windows: this.imageReads.windows,
      slotReused,
      corrupt: (snap, err, what) => snapshots.corruptOne(snap, err, what),
    });
  }

  /**
   * Write the origin behind the gate, after saving what live snapshots still need of
   * the chunks it touches. The caller checked the range and the mode; `length` > 0.
   */
  writeOrigin(buf: Buffer, offset: number, length: number, position: number): Promise<void> {
    return this.changeOrigin('write the origin', position, length, () => this.parts.origin.write(buf, offset, length, position));
  }

  /**
   * Make a range of the origin read as zeros (fallocate: `punch` or `zero`), behind the
   * gate: for every snapshot and map it is a write of zeros, so it goes exactly the way
   * `writeOrigin` does (copy-on-write of the chunks it touches, change tracking marked),
   * and only then is the origin itself punched or zeroed. The caller checked the range
   * and the mode; `length` > 0.
   */
  fallocateOrigin(kind: ZeroKind, position: number, length: number): Promise<void> {
    return this.changeOrigin('punch or zero the origin', position, length, () => this.parts.origin.fallocate(kind, position, length));
  }

  /**
   * Change [position, position + length) of the origin by `apply`, behind the gate,
   * after saving what live snapshots still need of the chunks it touches.
   */
  private async changeOrigin(what: string, position: number, length: number, apply: () => Promise<void>): Promise<void> {
    if (this.gate.enter() !== null) await this.gate.enterWhenOpen();
    try {
      // A change that waited at the gate while the engine began to close.
      this.parts.checkOpen(what);
      const cs = this.parts.geometry.chunkSize;
      const first = Math.floor(position / cs);
      const last = Math.floor((position + length - 1) / cs);
      // Every copy of this change settles before it leaves the gate (see chunk-copy.ts).
      const newest = this.parts.snapshots.newestLiveSeq;
      const prepared = this.chunks.prepareWrite(first, last, newest);
      if (prepared !== null) await prepared;
      // Every copy settled and no image reader reads these chunks from the origin: C may
      // write them until the next take (fast-path-state.ts).
      if (newest > 0) this.fast?.noCopyNeeded(first, last);
      this.parts.tracker.mark(position, length);
      await apply();
    } finally {
      this.gate.leave();
    }
  }

  /** SEEK_DATA / SEEK_HOLE in the image of `snap` (image-holes.ts). The caller checked the offset and the snapshot. */
  seekImage(snap: Snapshot, offset: number, what: SeekWhat): Promise<number | null> {
    return this.imageHoles.seek(snap, offset, what);
  }

  /** Read the image of `snap` (image-reads.ts). The caller checked the range and the snapshot. */
  readImage(snap: Snapshot, buf: Buffer, offset: number, length: number, position: number): Promise<void> {
    return this.imageReads.read(snap, buf, offset, length, position);
  }

  /** Write into the private copies of `snap` (image-writes.ts). The caller holds `snap`. */
  writeImage(snap: Snapshot, buf: Buffer, offset: number, length: number, position: number): Promise<void> {
    return this.imageWrites.write(snap, buf, offset, length, position);
  }

  /**
   * The shared state a native fast path serves from, made now from the engine's state
   * (every chunk "copy needed" until a write publishes it); its C writers pass the gate.
   */
  shareWithNative(): FastPathState {
    if (this.fast === null) {
      const { geometry, snapshots, tracker } = this.parts;
      this.fast = new FastPathState(geometry.chunkCount, {
        live: snapshots.newestLiveSeq > 0,
        activeNumber: tracker.activeNumber,
        gateClosed: this.gate.held,
      });
      this.gate.attachNative(this.fast);
    }
    return this.fast;
  }

  /** A take, inside its quiesce, after the change map was frozen: every chunk needs a copy again. */
  snapshotTaken(): void {
    this.fast?.snapshotTaken(this.parts.tracker.activeNumber);
  }

  /** Stop native serving (at close, with the gate held): no C request inside, the origin let go. */
  stopNative(): Promise<void> {
    return this.fast?.stopServing() ?? Promise.resolve();
  }

  /** Run `fn` with the gate held and no origin write inside. */
  quiesce<T>(fn: () => T | Promise<T>): Promise<T> {
    return this.gate.quiesce(fn);
  }

  /**
   * `snap` has left the live set: free the saved copies nobody needs any more and its
   * private copies. Returns the counts, for the log.
   */
  freeSnapshot(snap: Snapshot): { chunks_freed: number; private_chunks_freed: number } {
    const before = this.chunks.savedCopies;
    this.chunks.sweep();
    const { store } = this.parts;
    const privateFreed = snap.privateChunks.releaseAll((slot) => store.drop(slot));
    if (this.parts.snapshots.newestLiveSeq === 0) this.fast?.noneLive();
    return { chunks_freed: before - this.chunks.savedCopies, private_chunks_freed: privateFreed };
  }

  /** Saved copies of origin chunks the store holds (copies saved as holes are not in it). */
  get savedChunks(): number {
    return this.chunks.savedCopies - this.chunks.savedHoles;
  }

  /** Chunks saved as holes: they read as zeros and use no difference storage. */
  get savedHoles(): number {
    return this.chunks.savedHoles;
  }
}
