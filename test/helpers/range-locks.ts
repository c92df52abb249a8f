/**
 * Test-side bookkeeping for a model of a byte array that several workers write at once:
 * - `RangeLocks`: exclusive locks on byte ranges, so that the writes the model tracks
 *   never overlap while in flight (overlapping concurrent writes have no defined result
 *   on a disk either); everything else (reads, takes, writes elsewhere) runs freely;
 * - `WritesInFlight`: the writes in flight, and who wants to hear of each new one, so a
 *   reader can accept, byte by byte, the old value or the value of any write that ran
 *   during its read (a torn read is allowed, a byte from nowhere is not).
 */

export class RangeLocks {
  private held: Array<{ start: number; end: number }> = [];
  private waiters: Array<() => void> = [];

  private overlaps(start: number, end: number): boolean {
    return this.held.some((h) => h.start < end && start < h.end);
  }

  /** Lock [start, end); resolves with the unlock. */
  async lock(start: number, end: number): Promise<() => void> {
    while (this.overlaps(start, end)) await new Promise<void>((resolve) => this.waiters.push(resolve));
    const entry = { start, end };
    this.held.push(entry);
    return () => {
      this.held = this.held.filter((h) => h !== entry);
      const waiters = this.waiters;
      this.waiters = [];
      for (const w of waiters) w();
    };
  }
}

export interface TrackedWrite {
  start: number;
  end: number;
  data: Buffer;
  /** Logical time the write was called and settled at. */
  t0: number;
  t1: number;
  state: 'running' | 'ok' | 'failed';
  /** Resolves when it settled. */
  done: Promise<void>;
}

export class WritesInFlight<W extends TrackedWrite = TrackedWrite> {
  readonly active = new Set<W>();
  private readonly listeners = new Set<(w: W) => void>();

  add(w: W): void {
    this.active.add(w);
    for (const l of this.listeners) l(w);
  }

  remove(w: W): void {
    this.active.delete(w);
  }

  /** Every write in flight now and every one that starts until `stop()` is called. */
  capture(): { writes: W[]; stop: () => void } {
    const writes = [...this.active];
    const listener = (w: W): void => void writes.push(w);
    this.listeners.add(listener);
    return { writes, stop: () => void this.listeners.delete(listener) };
  }
}

/**
 * Does `got` (read at [position, position + got.length)) hold, byte by byte, either the
 * value `before` had at the start, the value `after` holds now, or the value of one of
 * `writes`? Returns the first offending offset, or -1.
 */
export function firstImpossibleByte(got: Buffer, position: number, before: Buffer, after: Buffer, writes: readonly TrackedWrite[]): number {
  if (got.equals(after) || got.equals(before)) return -1;
  for (let i = 0; i < got.length; i++) {
    const v = got[i];
    if (v === before[i] || v === after[i]) continue;
    const p = position + i;
    if (writes.some((w) => w.state !== 'failed' && w.start <= p && p < w.end && w.data[p - w.start] === v)) continue;
    return position + i;
  }
  return -1;
}
