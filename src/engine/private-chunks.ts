/**
 * One snapshot's private chunks: where writes to its image go.
 *
 * A write to a snapshot image must never reach the origin, and never a saved copy
 * either: one saved copy serves every snapshot in its (lo, hi] range (copy-table.ts),
 * so changing it in place would change other snapshots. The first write to a chunk of
 * an image therefore gives that snapshot a chunk of its own in the difference storage,
 * filled with the snapshot's view of the chunk (image-writes.ts); from then on every
 * read and write of that chunk of that image goes to it, whatever the origin does.
 *
 *     no private slot ──first write (exclusive)──> slot allocated, filled with the
 *                                                  snapshot's view, then recorded
 *     recorded ──writes (exclusive, one at a time)──> the same slot, changed in place
 *     recorded ──snapshot released──> releaseAll: every slot back to the storage
 *
 * Invariants:
 * - At most one private slot per (snapshot, chunk). Writes to one chunk of one
 *   snapshot run one at a time (`exclusive`): the first makes the copy, the others then
 *   find it (single flight), and two partial-block writes (read-modify-write of
 *   aligned blocks) can never undo each other.
 * - A slot is recorded only once it holds the whole chunk as the snapshot sees it, so a
 *   reader that finds it never reads a half-made chunk. Reads take no lock: a read
 *   concurrent with a write of the same bytes may see either, as on a block device; a
 *   read that starts after a write returned sees that write.
 * - A private slot's contents change, so the engine never keeps them in its caches of
 *   saved chunks (which assume a slot never changes while it is readable).
 * - Slots are released only with the snapshot, when nothing can reach it (no name, no
 *   open file, no write in flight: a write holds the snapshot while it runs).
 */
export class PrivateChunks {
  /** chunk -> slot of the snapshot's own copy. */
  private readonly slots = new Map<number, number>();
  /** chunk -> the end of the queue of writes to it (absent: nobody writes it now). */
  private readonly queues = new Map<number, Promise<void>>();
  private released = false;

  /** The slot of this snapshot's own copy of `chunk`, or -1. */
  slotOf(chunk: number): number {
    return this.slots.get(chunk) ?? -1;
  }

  /** `slot` now holds the snapshot's whole view of `chunk` (call inside `exclusive(chunk)`). */
  record(chunk: number, slot: number): void {
    if (this.released) throw new Error(`bug: private chunk ${chunk} recorded after the snapshot was released`);
    if (this.slots.has(chunk)) throw new Error(`bug: chunk ${chunk} already has a private copy`);
    this.slots.set(chunk, slot);
  }

  /** How many chunks this snapshot owns. */
  get count(): number {
    return this.slots.size;
  }

  /**
   * Run `fn` once every earlier `exclusive` call for `chunk` has settled, and before any
   * later one starts. A failure of `fn` is the caller's; the queue goes on.
   */
  async exclusive<T>(chunk: number, fn: () => Promise<T>): Promise<T> {
    const before = this.queues.get(chunk);
    let done = (): void => undefined;
    const mine = new Promise<void>((resolve) => (done = resolve));
    const tail = before === undefined ? mine : before.then(() => mine);
    this.queues.set(chunk, tail);
    try {
      if (before !== undefined) await before;
      return await fn();
    } finally {
      done();
      if (this.queues.get(chunk) === tail) this.queues.delete(chunk);
    }
  }

  /** The snapshot is gone: hand every slot back (once). */
  releaseAll(release: (slot: number) => void): number {
    if (this.released) return 0;
    this.released = true;
    const n = this.slots.size;
    for (const slot of this.slots.values()) release(slot);
    this.slots.clear();
    return n;
  }
}
