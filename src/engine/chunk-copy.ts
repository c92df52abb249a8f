/**
 * Copy-on-write of origin chunks, in one place: the life of one chunk's copy, and the
 * image readers that fetch a chunk from the origin meanwhile.
 *
 * One copy of one chunk, serving the snapshots whose seq lies in (lo, hi]:
 *
 *     idle ──a write finds savedThrough < newest──> copying(lo, hi)
 *                                                     │ read origin, allocate a slot,
 *                                                     │ write the slot (O_DIRECT);
 *                                                     │ or, when the origin's chunk is
 *                                                     │ wholly a hole, none of that
 *                                                     │ (saved as HOLE_SLOT)
 *                                        ┌────────────┴────────────┐
 *                                        v                         v
 *                                      saved                     failed
 *                             record (lo, hi, slot)     snapshots in (lo, hi] corrupted
 *                                        └────────────┬────────────┘
 *                                                     v
 *                                   savedThrough = hi, back to idle
 *
 * lo is what the chunk was saved through before; hi the newest live snapshot when the
 * copy started. Which saved copy serves which snapshot is the copy table's business
 * (copy-table.ts); this file decides when a copy starts, who waits for it, and who may
 * read the origin meanwhile.
 *
 * Invariants:
 * - No snapshot is taken while a write's copies are in flight. A write stays inside the
 *   take barrier (write-barrier.ts) until every copy it started or joined has settled
 *   (Promise.allSettled: one copy failing must not let the write leave while another
 *   is still copying). Copies are only started by writes, so while a copy is in flight
 *   its hi is the newest snapshot.
 * - A write joins an in-flight copy only if the copy covers the newest snapshot
 *   (hi >= newest); else it waits for that copy to settle and looks again. Joining a
 *   copy whose range ends before the newest snapshot would leave that snapshot reading
 *   the write's new bytes from the origin, with its state ok.
 * - A copy never rejects: its outcome is its state, and a failure is reported through
 *   `failed` (which corrupts the snapshots in (lo, hi]).
 * - No copy is made for snapshots that all own a private copy of the chunk (writes to
 *   their images, private-chunks.ts): they never read the origin's chunk or a saved
 *   copy again, so savedThrough just moves on. A private copy still being made is not
 *   owned yet (it is recorded only when complete): the copy is made as usual, and the
 *   private copy's origin read is a registered reader the write waits for.
 * - An image read decides where a chunk comes from and, when that is the origin,
 *   registers as the chunk's reader in one synchronous span (no await between the two;
 *   origin-readers.ts). A write waits, after its copies have settled, for the readers
 *   of its chunks before it writes the origin: an image reader never gets bytes newer
 *   than its snapshot.
 */
import type { OriginDevice } from '../storage/origin-device.js';
import type { ExceptionStore } from './exception-store.js';
import type { AlignedBufferPool } from '../storage/aligned.js';
import { CopyTable, HOLE_SLOT } from './copy-table.js';
import { OriginReaders } from './origin-readers.js';
import { wholeChunkIsHole } from './origin-holes.js';

export type CopyState = 'copying' | 'saved' | 'failed';

/** What the copy-on-write needs from the engine around it. */
export interface ChunkCopyParts {
  origin: OriginDevice;
  /** Where the copies go (exception-store.ts). */
  store: ExceptionStore;
  chunkSize: number;
  originSize: number;
  /** Aligned chunk buffers; its size bounds the copies in flight. */
  pool: AlignedBufferPool;
  /** `slot` is about to hold new data: forget whatever caches hold of its previous life. */
  slotReused(slot: number): void;
  /** Whether a snapshot still alive lies in (lo, hi]. */
  needed(lo: number, hi: number): boolean;
  /** Whether every live snapshot in (lo, hi] owns a private copy of `chunk` (image writes). */
  ownedByAll(chunk: number, lo: number, hi: number): boolean;
  /** The copy serving (lo, hi] failed: corrupt those snapshots. Must not throw. */
  failed(lo: number, hi: number, err: unknown, what: string): void;
}

/** Where a snapshot finds a chunk right now. */
export type ChunkSource =
  | { from: 'saved'; slot: number }
  /** Saved as a hole (it was wholly one on the origin when copied): it reads as zeros. */
  | { from: 'hole' }
  /** The origin still holds it; the caller is registered as its reader (call `doneReading`). */
  | { from: 'origin' }
  /** Its copy failed (the snapshot is corrupted). */
  | { from: 'lost' };

/** One copy of one chunk, from start to outcome. */
class ChunkCopy {
  state: CopyState = 'copying';
  /** Settles (never rejects) when the copy is saved or failed. */
  settled: Promise<void> = Promise.resolve();

  constructor(readonly chunk: number, readonly lo: number, readonly hi: number) {}
}

export class ChunkCopies {
  private readonly table = new CopyTable();
  private readonly readers = new OriginReaders();
  /** The copy in flight per chunk (at most one). */
  private readonly inFlight = new Map<number, ChunkCopy>();
  /** Saved copies that are holes (HOLE_SLOT: no storage). */
  private holes = 0;

  constructor(private readonly parts: ChunkCopyParts) {}

  /**
   * Before a write to chunks [first, last] of the origin, with `newest` the newest live
   * snapshot: copy every chunk that snapshot still needs, then wait for the image
   * readers of those chunks. null when there is nothing to wait for (the fast path
   * allocates no promise). The returned promise never rejects and settles only when
   * every copy this write started or joined has settled.
   */
  prepareWrite(first: number, last: number, newest: number): Promise<void> | null {
    let copies: Array<Promise<void>> | null = null;
    if (newest > 0) {
      for (let c = first; c <= last; c++) {
        const copy = this.copyFor(c, newest);
        if (copy !== null) (copies ??= []).push(copy);
      }
    }
    if (copies === null && !this.anyReader(first, last)) return null;
    return this.settleThenDrainReaders(copies, first, last);
  }

  private async settleThenDrainReaders(copies: Array<Promise<void>> | null, first: number, last: number): Promise<void> {
    if (copies !== null) await Promise.allSettled(copies);
    for (let c = first; c <= last; c++) {
      const idle = this.readers.idle(c);
      if (idle !== null) await idle;
    }
  }

  private anyReader(first: number, last: number): boolean {
    for (let c = first; c <= last; c++) if (this.readers.idle(c) !== null) return true;
    return false;
  }

  /** The copy a write must wait for before it changes `chunk`, or null when the chunk is saved through `newest`. */
  private copyFor(chunk: number, newest: number): Promise<void> | null {
    if (this.table.savedThrough(chunk) >= newest) return null;
    const running = this.inFlight.get(chunk);
    if (running === undefined) {
      if (this.parts.ownedByAll(chunk, this.table.savedThrough(chunk), newest)) {
        this.table.setSavedThrough(chunk, newest);
        return null;
      }
      return this.start(chunk, newest).settled;
    }
    if (running.hi >= newest) return running.settled;
    // A copy for an older snapshot: it cannot serve `newest`. Wait, then look again.
    return running.settled.then(() => this.copyFor(chunk, newest) ?? undefined);
  }

  private start(chunk: number, hi: number): ChunkCopy {
    const copy = new ChunkCopy(chunk, this.table.savedThrough(chunk), hi);
    this.inFlight.set(chunk, copy);
    copy.settled = this.run(copy);
    return copy;
  }

  /** copying -> saved | failed -> (savedThrough = hi) idle. Never rejects. */
  private async run(copy: ChunkCopy): Promise<void> {
    const { origin, store, chunkSize, originSize, pool } = this.parts;
    const { chunk, lo, hi } = copy;
    let buf: Buffer | null = null;
    let slot = -1;
    try {
      const start = chunk * chunkSize;
      const length = Math.min(chunkSize, originSize - start);
      if (await wholeChunkIsHole(origin, start, length)) {
        // Reads as zeros: no buffer, no read, no slot (origin-holes.ts).
        this.table.add(chunk, lo, hi, HOLE_SLOT);
        this.holes++;
      } else {
        buf = await pool.acquire();
        await origin.read(buf, 0, length, start);
        if (length < chunkSize) buf.fill(0, length);
        slot = await store.prepare(); // may wait for automatic growth
        this.parts.slotReused(slot);
        await store.commit(slot, buf);
        this.table.add(chunk, lo, hi, slot);
      }
      copy.state = 'saved';
    } catch (err) {
      copy.state = 'failed';
      if (slot >= 0) store.drop(slot);
      try {
        this.parts.failed(lo, hi, err, `cannot save chunk ${chunk}`);
      } catch {
        // `failed` must not throw; if it does, the write still goes on
      }
    } finally {
      this.table.setSavedThrough(chunk, hi);
      if (this.inFlight.get(chunk) === copy) this.inFlight.delete(chunk);
      if (buf !== null) pool.release(buf);
    }
    // A snapshot released while we copied may have left this copy serving nobody.
    if (copy.state === 'saved' && !this.parts.needed(lo, hi)) this.sweep();
  }

  /**
   * Where snapshot `seq` finds `chunk` now. For `origin` the caller is registered as a
   * reader of the chunk in this same synchronous call (a write that copies the chunk
   * after this point waits for it); it must call `doneReading(chunk)` when done.
   */
  startRead(chunk: number, seq: number): ChunkSource {
    const slot = this.table.lookup(chunk, seq);
    if (slot === HOLE_SLOT) return { from: 'hole' };
    if (slot >= 0) return { from: 'saved', slot };
    if (seq > this.table.savedThrough(chunk)) {
      this.readers.enter(chunk);
      return { from: 'origin' };
    }
    return { from: 'lost' };
  }

  doneReading(chunk: number): void {
    this.readers.leave(chunk);
  }

  /** The slot holding `chunk` as snapshot `seq` saw it, HOLE_SLOT, or -1 (for read-ahead: no registration). */
  savedSlot(chunk: number, seq: number): number {
    return this.table.lookup(chunk, seq);
  }

  /** Free every saved copy no live snapshot needs any more. */
  sweep(): void {
    this.table.sweep(this.parts.needed, (slot) => {
      if (slot === HOLE_SLOT) this.holes--;
      else this.parts.store.drop(slot);
    });
  }

  /** Saved copies, holes included. */
  get savedCopies(): number {
    return this.table.savedCopies;
  }

  /** Saved copies that are holes (they use no difference storage). */
  get savedHoles(): number {
    return this.holes;
  }

  /** Copies in flight (none once every write has left the barrier). */
  get copying(): number {
    return this.inFlight.size;
  }
}
