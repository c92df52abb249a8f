/**
 * A count of operations in flight, and a way to wait until there are none: the engine's
 * close waits for the reads in flight before it closes the files they read.
 */
export class InFlight {
  private count = 0;
  private waiters: Array<() => void> = [];

  begin(): void {
    this.count++;
  }

  end(): void {
    if (this.count === 0) return; // an end without a begin would let a close through early
    this.count--;
    if (this.count === 0 && this.waiters.length > 0) {
      const waiting = this.waiters;
      this.waiters = [];
      for (const wake of waiting) wake();
    }
  }

  get size(): number {
    return this.count;
  }

  /** Settles once nothing is in flight (at once if nothing is). */
  drained(): Promise<void> {
    if (this.count === 0) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }
}
