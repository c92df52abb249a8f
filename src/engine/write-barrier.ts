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
 *
 * With the native fast path, origin writes are also made in C: the gate then has a
 * native half (`NativeGate`, fast-path-state.ts) that closes and opens with this one,
 * and `drained()` waits for the C writers inside too.
 */

/** The C writers' half of the gate. */
export interface NativeGate {
  close(): void;
  open(): void;
  /** null when no C writer is inside; else resolves once none is. */
  drained(): Promise<void> | null;
}

export class WriteBarrier {
  private inFlight = 0;
  /** How many holders keep the gate closed; the gate is open exactly when this is 0. */
  private holds = 0;
  private gate: Promise<void> | null = null;
  private openGate: (() => void) | null = null;
  private drainWaiters: Array<() => void> = [];
  private native: NativeGate | null = null;

  /** From now on C writers pass this gate too (closed at once if held). */
  attachNative(gate: NativeGate): void {
    this.native = gate;
    if (this.holds > 0) gate.close();
  }

  /** Whether a take or a freeze holds the gate closed now. */
  get held(): boolean {
    return this.holds > 0;
  }

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
    if (this.holds++ === 0) {
      this.gate = new Promise<void>((resolve) => (this.openGate = resolve));
      this.native?.close();
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--this.holds > 0) return;
      const open = this.openGate;
      this.gate = null;
      this.openGate = null;
      this.native?.open();
      open?.();
    };
  }

  /** Resolves when no write, JavaScript's or C's, is inside (meaningful while the gate is held). */
  async drained(): Promise<void> {
    if (this.inFlight > 0) await new Promise<void>((resolve) => this.drainWaiters.push(resolve));
    const native = this.native?.drained() ?? null;
    if (native !== null) await native;
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
