/**
 * Reads of snapshot images: where each chunk of an image read comes from, and the
 * caches that make small and sequential reads of saved chunks cheap.
 *
 * One image read, chunk by chunk, all chunks at once:
 *   private copy of the snapshot (written through the image)  -> read it, never cached
 *   saved copy serving the snapshot (copy-table.ts)           -> read it (read-ahead,
 *                                                                window cache)
 *   saved as a hole (HOLE_SLOT)                               -> zeros, no read
 *   the origin still holds it                                 -> read the origin as a
 *                                                                registered reader
 *   its copy failed                                           -> EIO
 * The decision and the origin reader's registration happen in one synchronous call
 * (chunk-copy.ts `startRead`): an origin write to that chunk saves it first and then
 * waits for this reader, so an image read never gets bytes newer than its snapshot.
 *
 * Caches: saved slots never change while a snapshot can read them, but a freed slot is
 * reused for other data, so whoever is about to fill a slot calls `slotReused` first.
 */
import { BlksnapError } from '../errors.js';
import type { OriginDevice } from '../storage/origin-device.js';
import { AlignedBufferPool, alignDown, alignUp } from '../storage/aligned.js';
import type { ChunkCopies } from './chunk-copy.js';
import { HOLE_SLOT } from './copy-table.js';
import type { ExceptionStore } from './exception-store.js';
import { chunkPieces, type Geometry } from './geometry.js';
import { SavedReadAhead } from './saved-read-ahead.js';
import { SavedWindowCache } from './saved-window-cache.js';
import type { Snapshot } from './snapshot.js';

/** Largest piece of a saved chunk read in one O_DIRECT request. */
const READ_WINDOW = 256 * 1024;
/** Saved chunks read ahead of a sequential image reader (see SavedReadAhead). */
const READ_AHEAD_BYTES = 2 * 1024 * 1024;

export interface ImageReadParts {
  origin: OriginDevice;
  store: ExceptionStore;
  geometry: Geometry;
  /** Where a snapshot finds a chunk now (saved copy or origin, with reader registration). */
  sources: ChunkCopies;
}

export class ImageReads {
  /** Aligned window buffers for O_DIRECT reads of slots (image writes borrow them too). */
  readonly windows: AlignedBufferPool;
  private readonly readAhead: SavedReadAhead;
  private readonly windowCache = new SavedWindowCache();
  /** Where each snapshot's next sequential image read would start. */
  private readonly nextImageRead = new WeakMap<Snapshot, number>();

  constructor(private readonly parts: ImageReadParts) {
    const chunk = parts.geometry.chunkSize;
    const window = Math.min(chunk, READ_WINDOW);
    this.windows = new AlignedBufferPool(window, 32);
    this.readAhead = new SavedReadAhead(chunk, window, READ_AHEAD_BYTES);
  }

  /** `slot` is about to hold new data: forget whatever the caches hold of its previous life. */
  slotReused(slot: number): void {
    this.windowCache.allocated(slot);
    this.readAhead.forgetSlot(slot);
  }

  /**
   * The pieces of one image read, one per chunk, read concurrently. Every piece has
   * settled before this returns or throws: a piece still reading into `buf` after the
   * reply would write into a buffer the caller has moved on with. The caller checked
   * the range and the snapshot's state.
   */
  async read(snap: Snapshot, buf: Buffer, offset: number, length: number, position: number): Promise<void> {
    const cs = this.parts.geometry.chunkSize;
    const pieces = chunkPieces(cs, position, length).map((p) => this.readPiece(snap, p.chunk, p.inChunk, p.length, buf, offset + p.done));
    // A sequential reader: start reading the saved chunks just past this request.
    if (this.nextImageRead.get(snap) === position) this.readAheadImage(snap, Math.floor((position + length) / cs));
    this.nextImageRead.set(snap, position + length);
    if (pieces.length === 1) {
      await pieces[0];
      return;
    }
    const outcomes = await Promise.allSettled(pieces);
    for (const outcome of outcomes) if (outcome.status === 'rejected') throw outcome.reason;
  }

  private async readPiece(snap: Snapshot, chunk: number, inChunk: number, length: number, buf: Buffer, offset: number): Promise<void> {
    // Written through the image: its own copy, whatever the origin and the saved copies hold.
    const own = snap.privateChunks.slotOf(chunk);
    if (own >= 0) {
      await this.readSaved(own, inChunk, length, buf, offset, false);
      return;
    }
    // Decision and reader registration in one synchronous call (see chunk-copy.ts).
    const { sources, origin, geometry } = this.parts;
    const source = sources.startRead(chunk, snap.seq);
    switch (source.from) {
      case 'saved':
        await this.readSaved(source.slot, inChunk, length, buf, offset, true);
        return;
      case 'hole': // saved as a hole: zeros, nothing to read
        buf.fill(0, offset, offset + length);
        return;
      case 'origin':
        try {
          await origin.read(buf, offset, length, chunk * geometry.chunkSize + inChunk);
        } finally {
          sources.doneReading(chunk);
        }
        return;
      case 'lost':
        throw BlksnapError.of('EIO', `snapshot ${snap.name} lost chunk ${chunk}`);
    }
  }

  /**
   * Queue reads of the saved windows of the chunks from `from` on (see SavedReadAhead),
   * and hint the kernel about the origin's chunks in the same window.
   */
  private readAheadImage(snap: Snapshot, from: number): void {
    const { sources, store, origin, geometry } = this.parts;
    const ra = this.readAhead;
    const chunks = Math.max(1, Math.floor(ra.capacity / ra.windowsPerChunk));
    const to = Math.min(geometry.chunkCount - 1, from + chunks - 1);
    let originChunks = 0;
    for (let c = from; c <= to; c++) {
      if (snap.privateChunks.slotOf(c) >= 0) continue; // read from its own copy, never cached
      const slot = sources.savedSlot(c, snap.seq);
      if (slot === HOLE_SLOT) continue; // zeros, nothing to read
      if (slot < 0) {
        originChunks++;
        continue;
      }
      for (let w = 0; w < ra.windowsPerChunk * ra.windowSize; w += ra.windowSize) {
        if (!ra.has(slot, w)) ra.start(slot, w, (b) => store.read(slot, w, ra.windowSize, b));
      }
    }
    // The kernel's own read-ahead loses track of a reader that skips the saved chunks.
    if (originChunks > 0) origin.willNeed(from * geometry.chunkSize, (to - from + 1) * geometry.chunkSize);
  }

  /**
   * O_DIRECT reads of the aligned windows around [inChunk, inChunk + length). A read
   * that needs only part of a window keeps the whole window in the cache for its
   * neighbours; whole-window reads go straight through. A private chunk (`cacheable`
   * false) changes with every image write, so it is never cached nor read ahead.
   */
  private async readSaved(slot: number, inChunk: number, length: number, buf: Buffer, offset: number, cacheable: boolean): Promise<void> {
    const end = inChunk + length;
    const size = this.windows.bufferSize;
    for (let window = Math.floor(inChunk / size) * size; window < end; window += size) {
      const from = Math.max(inChunk, window);
      const to = Math.min(end, window + size);
      const partial = cacheable && to - from < size;
      const early = cacheable && this.readAhead.has(slot, window) ? await this.readAhead.take(slot, window) : null;
      if (early !== null) {
        early.copy(buf, offset + (from - inChunk), from - window, to - window);
        this.readAhead.done(early);
        continue;
      }
      const cached = partial ? this.windowCache.get(slot, window) : undefined;
      if (cached !== undefined) {
        cached.copy(buf, offset + (from - inChunk), from - window, to - window);
        continue;
      }
      const first = partial ? window : alignDown(from);
      const last = partial ? window + size : alignUp(to);
      const tmp = await this.windows.acquire();
      try {
        await this.parts.store.read(slot, first, last - first, tmp);
        tmp.copy(buf, offset + (from - inChunk), from - first, to - first);
        if (partial) this.windowCache.set(slot, window, Buffer.from(tmp.subarray(0, size)));
      } finally {
        this.windows.release(tmp);
      }
    }
  }
}
