/**
 * Image reads that are fetching a chunk from the origin right now.
 *
 * An image read decides "the origin still holds this chunk" and registers itself in
 * the same synchronous span (no await between the two: in Node that span is the
 * critical section). A write to that chunk saves the old contents first and then waits
 * here until such readers are done before it touches the origin, so a reader never
 * receives data newer than its snapshot (dm-snapshot's tracked origin reads).
 */
export class OriginReaders {
  private readonly counts = new Map<number, number>();
  private readonly waiters = new Map<number, Array<() => void>>();

  enter(chunk: number): void {
    this.counts.set(chunk, (this.counts.get(chunk) ?? 0) + 1);
  }

  leave(chunk: number): void {
    const n = (this.counts.get(chunk) ?? 1) - 1;
    if (n > 0) {
      this.counts.set(chunk, n);
      return;
    }
    this.counts.delete(chunk);
    const waiting = this.waiters.get(chunk);
    if (waiting !== undefined) {
      this.waiters.delete(chunk);
      for (const wake of waiting) wake();
    }
  }

  /** null when nobody reads `chunk` from the origin; otherwise resolves when they are done. */
  idle(chunk: number): Promise<void> | null {
    if (!this.counts.has(chunk)) return null;
    return new Promise((resolve) => {
      const list = this.waiters.get(chunk);
      if (list === undefined) this.waiters.set(chunk, [resolve]);
      else list.push(resolve);
    });
  }
}
