/**
 * The gate every origin write passes, which makes taking a snapshot a point in time
 * and lets /control freeze the origin.
 *
 * Every origin write enters and leaves. Whoever needs the origin still holds the gate
 * closed (`hold`): new writes wait at it, and `drained()` resolves once the writes
 * already inside have left. Holds are counted, and the gate opens when the last one is
 * released, so a snapshot take (`quiesce`) works while a /control freeze holds the
 * gate too: it shares the closed gate instead of waiting for it to open, which would
 * deadlock `mkdir` under `freeze`. `enter` returns null on the fast path, so an
 * ordinary write allocates no promise for the barrier.
 */
export class WriteBarrier {
  private inFlight = 0;
  /** How many holders keep the gate closed; the gate is open exactly when this is 0. */
  private holds = 0;
  private gate: Promise<void> | null = null;
  private openGate: (() => void) | null = null;
  private drainWaiters: Array<() => void> = [];

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
    if (this.inFlight === 0 && this.drainWaiters.length > 0) {
      const waiters = this.drainWaiters;
      this.drainWaiters = [];
      for (const done of waiters) done();
    }
  }

  /** Close the gate to new writes until the returned release is called (once; later calls do nothing). */
  hold(): () => void {
    if (this.holds++ === 0) this.gate = new Promise<void>((resolve) => (this.openGate = resolve));
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--this.holds > 0) return;
      const open = this.openGate;
      this.gate = null;
      this.openGate = null;
      open?.();
    };
  }

  /** Resolves when no write is inside (meaningful while the gate is held). */
  drained(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise<void>((resolve) => this.drainWaiters.push(resolve));
  }

  /** Run `fn` with the gate held and no write inside. */
  async quiesce<T>(fn: () => T | Promise<T>): Promise<T> {
    const release = this.hold();
    try {
      await this.drained();
      return await fn();
    } finally {
      release();
    }
  }
}
