/**
 * What the native fast path may rely on: the state JavaScript publishes so that origin
 * requests needing nothing from the engine are served in C (native/fuse3/fastpath.h has
 * the C side and the memory-ordering pairings). The engine is its only author, except
 * for the change-map marks C writes and the gate counter C writers move.
 *
 *   header[GATE]    GATE_CLOSED + the count of C writers inside the origin's write gate
 *   header[EPOCH]   1..255: a chunk whose mark equals it needs no copy
 *   header[LIVE]    0: no live snapshot, no write needs a copy
 *   header[ACTIVE]  the change map's open period number, the byte C marks with
 *   marks[chunk]    one byte per chunk
 *   the change map  the tracker's own bytes (change-tracker.ts), marked by C directly
 *
 * The invariant that keeps every snapshot exact: a C write reaches the origin only if,
 * when it passed the gate, no live snapshot needed a copy of any chunk it touches and no
 * image reader was reading those chunks from the origin. It holds because:
 * - A chunk's mark becomes EPOCH only from inside the JavaScript write gate, after the
 *   write that publishes it saw every copy of the chunk settle (saved, lost or owned
 *   privately through the newest live snapshot) and the chunk's origin readers drain
 *   (diff-area.ts, right after prepareWrite). From then on no image read can register
 *   as the chunk's origin reader: every live snapshot is at or below the chunk's
 *   savedThrough, and no newer snapshot can appear without a take.
 * - A take ends "no copy needed" for every chunk at once, before its barrier opens:
 *   it closes the gate (JavaScript's and C's), waits until no JavaScript and no C writer
 *   is inside, freezes the change map, bumps EPOCH (so no mark equals it), sets LIVE and
 *   ACTIVE, and only then opens the gate. O(1): no per-chunk state is walked, except
 *   that every 255th take clears the marks so an old mark can never equal a reused
 *   epoch (a memset of one byte per chunk).
 * - LIVE drops to 0 only when the last snapshot is released: nothing needs a copy then.
 * - A /control freeze holds the same gate (write-barrier.ts), so no C write completes
 *   while frozen; writes that arrive meanwhile go to JavaScript and wait at its gate.
 * - The change map: C marks the blocks of a write with ACTIVE before its pwrite, as the
 *   engine does; ACTIVE changes only at a take, with the gate closed and drained, so
 *   every C write's marks fall wholly in one period and the frozen map of a take holds
 *   every write that completed before it. The map is read (frozen, saved) only with
 *   the gate closed and drained.
 * - At close the engine stops the fast path (no C request inside, the addon's origin
 *   descriptor closed) before it syncs and releases the origin.
 *
 * Memory: the header, the marks (one byte per chunk: 256 MiB for a 16 TiB origin at
 * chunk_size=64K, pages touched only where chunks were published) and the change map
 * live in ArrayBuffers, whose memory never moves; the transport keeps them alive for C.
 */
import type { NativeGate } from './write-barrier.js';

export const HDR = { GATE: 0, EPOCH: 1, LIVE: 2, ACTIVE: 3, WORDS: 8 } as const;
export const GATE_CLOSED = 1 << 30;
const MAX_EPOCH = 255;

/** The part of the transport the engine needs to stop native serving at close. */
export interface NativeServer {
  /** Resolves once no native request is inside and the transport has let the origin go. */
  stop(): Promise<void>;
}

export class FastPathState implements NativeGate {
  readonly header = new Int32Array(new ArrayBuffer(HDR.WORDS * 4));
  readonly marks: Uint8Array;
  private drainWaiters: Array<() => void> = [];
  private server: NativeServer | null = null;

  /**
   * `chunkCount` marks, all "copy needed"; `live` and `activeNumber` as the engine
   * stands now, `gateClosed` if a take or freeze holds the gate right now.
   */
  constructor(chunkCount: number, state: { live: boolean; activeNumber: number; gateClosed: boolean }) {
    this.marks = new Uint8Array(new ArrayBuffer(chunkCount));
    Atomics.store(this.header, HDR.EPOCH, 1);
    Atomics.store(this.header, HDR.LIVE, state.live ? 1 : 0);
    Atomics.store(this.header, HDR.ACTIVE, state.activeNumber);
    if (state.gateClosed) this.close();
  }

  /** The transport serving from this state, stopped at the engine's close. */
  serveBy(server: NativeServer): void {
    this.server = server;
  }

  async stopServing(): Promise<void> {
    const server = this.server;
    this.server = null;
    await server?.stop();
  }

  // ---- the gate (write-barrier.ts holds it through NativeGate) --------------------

  close(): void {
    Atomics.or(this.header, HDR.GATE, GATE_CLOSED);
  }

  open(): void {
    Atomics.and(this.header, HDR.GATE, ~GATE_CLOSED);
  }

  /** null when no C writer is inside; else resolves once none is (meaningful while closed). */
  drained(): Promise<void> | null {
    if (this.writersInside() === 0) return null;
    return new Promise<void>((resolve) => {
      this.drainWaiters.push(resolve);
      this.recheck(); // one may have left between the look and the push
    });
  }

  /** A C writer left the closed gate empty (the transport's FAST_DRAINED news): look again. */
  recheck(): void {
    if (this.writersInside() !== 0 || this.drainWaiters.length === 0) return;
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const wake of waiters) wake();
  }

  private writersInside(): number {
    return Atomics.load(this.header, HDR.GATE) & ~GATE_CLOSED;
  }

  // ---- publication (the engine calls these; see the header for when) -------------

  /** A take, inside its quiesce: every chunk needs a copy again; `activeNumber` is the new period's. */
  snapshotTaken(activeNumber: number): void {
    let epoch = Atomics.load(this.header, HDR.EPOCH) + 1;
    if (epoch > MAX_EPOCH) {
      this.marks.fill(0);
      epoch = 1;
    }
    Atomics.store(this.header, HDR.EPOCH, epoch);
    Atomics.store(this.header, HDR.ACTIVE, activeNumber);
    Atomics.store(this.header, HDR.LIVE, 1);
  }

  /** The last live snapshot was released: no write needs a copy. */
  noneLive(): void {
    Atomics.store(this.header, HDR.LIVE, 0);
  }

  /** Chunks [first, last] need no copy for any live snapshot (called from inside the write gate). */
  noCopyNeeded(first: number, last: number): void {
    const epoch = Atomics.load(this.header, HDR.EPOCH);
    const end = Math.min(last, this.marks.length - 1);
    for (let c = first; c <= end; c++) if (this.marks[c] !== epoch) Atomics.store(this.marks, c, epoch);
  }
}
