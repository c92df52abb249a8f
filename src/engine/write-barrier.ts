/**
 * The barrier that makes taking a snapshot a point in time.
 *
 * Every origin write enters and leaves. `quiesce(fn)` closes the gate to new writes,
 * waits until the writes already inside have left, runs `fn` (which creates the
 * snapshot), and opens the gate again. So every write that completed before mkdir is
 * in the snapshot, and every write that starts after it sees the snapshot and saves
 * the chunks it needs. `enter` returns null on the fast path, so an ordinary write
 * allocates no promise for the barrier.
 */
export class WriteBarrier {
  private inFlight = 0;
  private gate: Promise<void> | null = null;
  private drained: (() => void) | null = null;

  /** null when the write may proceed now; otherwise wait for the promise and call again. */
  enter(): Promise<void> | null {
    if (this.gate !== null) return this.gate;
    this.inFlight++;
    return null;
  }

  async enterWhenOpen(): Promise<void> {
    for (let wait = this.enter(); wait !== null; wait = this.enter()) await wait;
  }

  leave(): void {
    this.inFlight--;
    if (this.inFlight === 0 && this.drained !== null) {
      const done = this.drained;
      this.drained = null;
      done();
    }
  }

  async quiesce<T>(fn: () => T | Promise<T>): Promise<T> {
    while (this.gate !== null) await this.gate;
    let open!: () => void;
    this.gate = new Promise<void>((resolve) => (open = resolve));
    try {
      if (this.inFlight > 0) await new Promise<void>((resolve) => (this.drained = resolve));
      return await fn();
    } finally {
      this.gate = null;
      open();
    }
  }
}
