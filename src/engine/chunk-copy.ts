/**
 * Copy-on-write of origin chunks, in one place: the life of a copy run, and the image
 * readers that fetch a chunk from the origin meanwhile.
 *
 * A copy run saves chunks [first, first + count) (adjacent, at most one copy buffer's
 * worth) for the snapshots up to hi, the newest live snapshot when it started. Each
 * chunk c of it serves the snapshots in (lo_c, hi], lo_c being what c was saved through
 * before; the lo_c of one run may differ (some chunks were saved for older snapshots).
 *
 *     idle ──a write finds savedThrough < newest for adjacent chunks──> copying
 *                  │ chunks wholly a hole on the origin: saved as HOLE_SLOT (no slot,
 *                  │ nothing written; origin-holes.ts); then, unless all are holes,
 *                  │ one origin read of the whole run; slots in a row in the storage
 *                  │ (prepareRun, as few pieces as the allocator can give: usually one)
 *                  │ for the stretches between holes; one O_DIRECT write per piece
 *                  v
 *               settled: in one synchronous step, per chunk:
 *                  piece written  -> recorded (hi, slot): saved for (lo_c, hi]
 *                  piece failed   -> recorded (hi, LOST_SLOT); the snapshots in
 *                                    (min lo_c of the failed chunks, hi] are corrupted
 *                  then savedThrough = hi for every chunk of the run, back to idle
 *
 * Which saved copy serves which snapshot is the copy table's business (copy-table.ts);
 * this file decides when a run starts, who waits for it, and who may read the origin
 * meanwhile.
 *
 * Invariants:
 * - Single flight: a chunk is in at most one run in flight (`inFlight`), and a run never
 *   includes a chunk that is saved through the newest snapshot already, in flight, or
 *   owned privately by every snapshot that needs it; such chunks split a write's chunks
 *   into several runs.
 * - No snapshot is taken while a write's runs are in flight. A write stays inside the
 *   take barrier (write-barrier.ts) until every run it started or joined has settled
 *   (`prepareWrite`'s promise). Runs are only started by writes, so while a run is in
 *   flight its hi is the newest snapshot.
 * - A write joins a run in flight only if the run covers the newest snapshot
 *   (hi >= newest); else it waits for that run to settle and looks again at those
 *   chunks. Joining a run whose range ends before the newest snapshot would leave that
 *   snapshot reading the write's new bytes from the origin, with its state ok.
 * - A run's chunks settle together: records, savedThrough and the end of `inFlight`
 *   change for all of them in one synchronous step after the run's last write, so a
 *   run's chunks stop needing a copy at the same moment (the native fast path of
 *   issue 14 publishes "needs no copy" for a write's chunks once its prepareWrite has
 *   settled).
 * - A run never rejects: its outcome is in the table, and a failure is reported through
 *   `failed`, which corrupts exactly the snapshots that needed a chunk that could not be
 *   saved (a failed origin read fails every chunk of the run; a failed allocation or
 *   write fails the chunks of that piece and of the pieces not yet allocated). The origin
 *   write goes on whatever the outcome.
 * - Copy buffers are bounded: one pooled buffer per run in flight, at most
 *   COPY_POOL_BYTES of them (diff-area.ts); a run waits for one.
 * - No copy is made for snapshots that all own a private copy of the chunk (writes to
 *   their images, private-chunks.ts): they never read the origin's chunk or a saved
 *   copy again, so savedThrough just moves on (a LOST_SLOT record). A private copy still
 *   being made is not owned yet (it is recorded only when complete): the copy is made as
 *   usual, and the private copy's origin read is a registered reader the write waits for.
 * - An image read decides where a chunk comes from and, when that is the origin,
 *   registers as the chunk's reader in one synchronous span (no await between the two;
 *   origin-readers.ts), chunk by chunk. A write waits, after its runs have settled, for
 *   the readers of its chunks before it writes the origin: an image reader never gets
 *   bytes newer than its snapshot.
 */
import type { OriginDevice } from '../storage/origin-device.js';
import type { ExceptionStore } from './exception-store.js';
import type { AlignedBufferPool } from '../storage/aligned.js';
import { CopyTable, HOLE_SLOT, LOST_SLOT } from './copy-table.js';
import { holeChunks } from './origin-holes.js';
import { OriginReaders } from './origin-readers.js';

/** What the copy-on-write needs from the engine around it. */
export interface ChunkCopyParts {
  origin: OriginDevice;
  /** Where the copies go (exception-store.ts). */
  store: ExceptionStore;
  chunkSize: number;
  originSize: number;
  /**
   * Aligned run buffers of a whole number of chunks; a run is at most one buffer long,
   * and the pool's size bounds the runs in flight.
   */
  pool: AlignedBufferPool;
  /** `slot` is about to hold new data: forget whatever caches hold of its previous life. */
  slotReused(slot: number): void;
  /** Whether a snapshot still alive lies in (lo, hi]. */
  needed(lo: number, hi: number): boolean;
  /** Whether every live snapshot in (lo, hi] owns a private copy of `chunk` (image writes). */
  ownedByAll(chunk: number, lo: number, hi: number): boolean;
  /** The copies serving (lo, hi] failed: corrupt those snapshots. Must not throw. */
  failed(lo: number, hi: number, err: unknown, what: string): void;
}

/** Where a snapshot finds a chunk right now. */
export type ChunkSource =
  | { from: 'saved'; slot: number }
  /** The origin still holds it; the caller is registered as its reader (call `doneReading`). */
  | { from: 'origin' }
  /** Saved as a hole (it was wholly one on the origin when copied): it reads as zeros. */
  | { from: 'hole' }
  /** Its copy failed (the snapshot is corrupted). */
  | { from: 'lost' };

/** One run of adjacent chunks being copied, from start to settling. */
class CopyRun {
  /** Settles (never rejects) once every chunk of the run is recorded. */
  settled: Promise<void> = Promise.resolve();

  constructor(
    readonly first: number,
    readonly count: number,
    readonly hi: number,
    /** What each chunk was saved through when the run started (its copy serves (lo, hi]). */
    readonly lo: Uint32Array,
  ) {}
}

export class ChunkCopies {
  private readonly table = new CopyTable();
  private readonly readers = new OriginReaders();
  /** The run in flight per chunk (at most one). */
  private readonly inFlight = new Map<number, CopyRun>();
  /** Chunks in one run at most: one pooled buffer's worth. */
  readonly maxRunChunks: number;

  constructor(private readonly parts: ChunkCopyParts) {
    this.maxRunChunks = Math.max(1, Math.floor(parts.pool.bufferSize / parts.chunkSize));
  }

  /**
   * Before a write to chunks [first, last] of the origin, with `newest` the newest live
   * snapshot: copy every chunk that snapshot still needs (adjacent ones as runs), then
   * wait for the image readers of [first, last]. null when there is nothing to wait for
   * (the fast path allocates no promise). The returned promise never rejects and settles
   * only when every run this write started or joined has settled and no image reader
   * reads a chunk of [first, last] from the origin; then every chunk of [first, last] is
   * saved (or lost, or owned privately) through `newest`.
   */
  prepareWrite(first: number, last: number, newest: number): Promise<void> | null {
    const copies = newest > 0 ? this.runsFor(first, last, newest) : null;
    if (copies === null && !this.anyReader(first, last)) return null;
    return this.settleThenDrainReaders(copies, first, last);
  }

  private async settleThenDrainReaders(copies: Array<Promise<void>> | null, first: number, last: number): Promise<void> {
    // Runs never reject (see the header): one is awaited as it is, several all settled.
    if (copies !== null) await (copies.length === 1 ? copies[0] : Promise.allSettled(copies));
    for (let c = first; c <= last; c++) {
      const idle = this.readers.idle(c);
      if (idle !== null) await idle;
    }
  }

  private anyReader(first: number, last: number): boolean {
    for (let c = first; c <= last; c++) if (this.readers.idle(c) !== null) return true;
    return false;
  }

  /**
   * What a write to [first, last] must wait for so that every chunk of it is saved
   * through `newest`: the runs it starts (maximal stretches of chunks needing a new
   * copy, split at maxRunChunks), the runs in flight it joins, and, for chunks in a run
   * for an older snapshot, that run followed by a second look. null: nothing.
   */
  private runsFor(first: number, last: number, newest: number): Array<Promise<void>> | null {
    let waits: Array<Promise<void>> | null = null;
    let joined: CopyRun | null = null;
    let startFrom = -1; // first chunk of the run being gathered
    let olderRun: CopyRun | null = null; // the older run the chunks from olderFrom wait for
    let olderFrom = -1;
    const startGathered = (end: number): void => {
      if (startFrom < 0) return;
      (waits ??= []).push(this.start(startFrom, end - startFrom, newest).settled);
      startFrom = -1;
    };
    const lookAgainAfterOlder = (end: number): void => {
      if (olderRun === null) return;
      const from = olderFrom;
      const to = end - 1;
      (waits ??= []).push(olderRun.settled.then(() => this.settleAll(this.runsFor(from, to, newest))));
      olderRun = null;
    };
    for (let c = first; c <= last; c++) {
      const saved = this.table.savedThrough(c);
      // Saved through newest already: nothing to wait for, whatever a run for a newer snapshot does.
      const running = saved >= newest ? undefined : this.inFlight.get(c);
      const older = running !== undefined && running.hi < newest ? running : null;
      if (older !== olderRun) {
        lookAgainAfterOlder(c);
        if (older !== null) {
          olderRun = older;
          olderFrom = c;
        }
      }
      if (running !== undefined) {
        startGathered(c);
        // A run for the newest snapshot: join it (once, however many of its chunks we touch).
        if (older === null && running !== joined) {
          (waits ??= []).push(running.settled);
          joined = running;
        }
        continue;
      }
      if (saved >= newest) {
        startGathered(c);
        continue;
      }
      if (this.parts.ownedByAll(c, saved, newest)) {
        startGathered(c);
        this.table.record(c, newest, LOST_SLOT);
        continue;
      }
      if (startFrom >= 0 && c - startFrom >= this.maxRunChunks) startGathered(c);
      if (startFrom < 0) startFrom = c;
    }
    startGathered(last + 1);
    lookAgainAfterOlder(last + 1);
    return waits;
  }

  private async settleAll(waits: Array<Promise<void>> | null): Promise<void> {
    if (waits !== null) await Promise.allSettled(waits);
  }

  private start(first: number, count: number, hi: number): CopyRun {
    const lo = new Uint32Array(count);
    for (let i = 0; i < count; i++) lo[i] = this.table.savedThrough(first + i);
    const run = new CopyRun(first, count, hi, lo);
    for (let i = 0; i < count; i++) this.inFlight.set(first + i, run);
    run.settled = this.copy(run);
    return run;
  }

  /** copying -> settled (see the header). Never rejects. */
  private async copy(run: CopyRun): Promise<void> {
    const { origin, store, chunkSize, originSize, pool } = this.parts;
    const { first, count, hi } = run;
    /** Per chunk of the run: its slot once written (or HOLE_SLOT), or -1 (then it is lost). */
    const slots = new Float64Array(count).fill(-1);
    let failure: unknown = null;
    // Chunks wholly a hole on the origin are saved as holes (asked only of an origin that
    // may have holes: a dense one costs no system call here).
    const asking = holeChunks(origin, first, count, chunkSize);
    const holes = asking === null ? null : await asking;
    let holeCount = 0;
    for (let i = 0; holes !== null && i < count; i++) {
      if (holes[i] !== 1) continue;
      slots[i] = HOLE_SLOT;
      holeCount++;
    }
    const buf = holeCount === count ? null : (pool.tryAcquire() ?? (await pool.acquire()));
    try {
      const start = first * chunkSize;
      const bytes = count * chunkSize;
      const length = Math.min(bytes, originSize - start);
      if (buf !== null) {
        await origin.read(buf, 0, length, start);
        if (length < bytes) buf.fill(0, length, bytes);
      }
      // Slots in a row where the allocator can give them; the rest of the run asks again.
      // Only chunks still without a slot value get one: the stretches between holes.
      for (let done = 0; buf !== null && done < count;) {
        if ((slots[done] ?? -1) !== -1) {
          done++;
          continue;
        }
        let end = done + 1;
        while (end < count && slots[end] === -1) end++;
        // Without a promise when there is space now; else it may wait for automatic growth.
        const piece = store.tryPrepareRun(end - done) ?? (await store.prepareRun(end - done));
        try {
          for (let i = 0; i < piece.count; i++) this.parts.slotReused(piece.slot + i);
          await store.commitRun(piece.slot, piece.count, buf.subarray(done * chunkSize, (done + piece.count) * chunkSize));
        } catch (err) {
          for (let i = 0; i < piece.count; i++) store.drop(piece.slot + i);
          throw err;
        }
        for (let i = 0; i < piece.count; i++) slots[done + i] = piece.slot + i;
        done += piece.count;
      }
    } catch (err) {
      // The read, an allocation or a write failed: the chunks not written yet are lost.
      failure = err;
    } finally {
      if (buf !== null) pool.release(buf);
    }
    // Settle every chunk of the run in one synchronous step (see the header).
    let lostFrom = -1;
    let lostTo = -1;
    let lostLo = Infinity;
    for (let i = 0; i < count; i++) {
      const slot = slots[i] ?? -1;
      this.table.record(first + i, hi, slot >= 0 ? slot : LOST_SLOT);
      if (slot < 0) {
        if (lostFrom < 0) lostFrom = i;
        lostTo = i;
        lostLo = Math.min(lostLo, run.lo[i] ?? 0);
      }
      if (this.inFlight.get(first + i) === run) this.inFlight.delete(first + i);
    }
    if (lostFrom >= 0) {
      const lost = lostFrom === lostTo ? `chunk ${first + lostFrom}` : `chunks ${first + lostFrom}..${first + lostTo}`;
      try {
        this.parts.failed(lostLo, hi, failure, `cannot save ${lost}`);
      } catch {
        // `failed` must not throw; if it does, the write still goes on
      }
    }
    // A snapshot released while we copied may have left part of this run serving nobody.
    let narrowest = 0;
    for (const lo of run.lo) narrowest = Math.max(narrowest, lo);
    if (!this.parts.needed(narrowest, hi)) this.sweep();
  }

  /**
   * Where snapshot `seq` finds `chunk` now. For `origin` the caller is registered as a
   * reader of the chunk in this same synchronous call (a write that copies the chunk
   * after this point waits for it); it must call `doneReading(chunk)` when done.
   */
  startRead(chunk: number, seq: number): ChunkSource {
    const slot = this.table.lookup(chunk, seq);
    if (slot < 0) {
      this.readers.enter(chunk);
      return { from: 'origin' };
    }
    if (slot === LOST_SLOT) return { from: 'lost' };
    if (slot === HOLE_SLOT) return { from: 'hole' };
    return { from: 'saved', slot };
  }

  doneReading(chunk: number): void {
    this.readers.leave(chunk);
  }

  /** The slot holding `chunk` as snapshot `seq` saw it, HOLE_SLOT, or -1 (for read-ahead: no registration). */
  savedSlot(chunk: number, seq: number): number {
    const slot = this.table.lookup(chunk, seq);
    return slot === LOST_SLOT ? -1 : slot;
  }

  /** Free every saved copy no live snapshot needs any more. */
  sweep(): void {
    this.table.sweep(this.parts.needed, (slot) => this.parts.store.drop(slot));
  }

  /** Saved copies, holes included. */
  get savedCopies(): number {
    return this.table.savedCopies;
  }

  /** Saved copies that are holes (they use no difference storage). */
  get savedHoles(): number {
    return this.table.savedHoles;
  }

  /** Chunks being copied (none once every write has left the barrier). */
  get copying(): number {
    return this.inFlight.size;
  }
}
