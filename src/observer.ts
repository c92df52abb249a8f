/**
 * Calling a callback that one part of the daemon hands to another (event observers,
 * low-space notices, change-map resets, growth reports).
 *
 * Such a callback belongs to somebody else: it may log, emit an event, or simply have
 * a bug. Whatever it does, it must not throw into the part that called it, which is
 * usually in the middle of its own bookkeeping (a slot just taken, a snapshot just
 * numbered). So:
 *
 * - `notifyLater` runs the callback in a microtask, after the caller's synchronous
 *   span (its critical section) is over, and catches what it throws;
 * - `notifySafely` runs it now, for callers whose work is already complete when they
 *   notify (the event queue after its ring and followers are updated), and catches
 *   what it throws.
 *
 * A callback that throws is a bug in the daemon: it is written to stderr once per
 * `what`, best effort (stderr itself may be gone), and otherwise ignored.
 */
import { writeSync } from 'node:fs';

const reported = new Set<string>();

function reportThrow(what: string, err: unknown): void {
  if (reported.has(what)) return;
  reported.add(what);
  try {
    writeSync(2, `blksnapfs: ${what} failed (ignored): ${err instanceof Error ? err.message : String(err)}\n`);
  } catch {
    // stderr is gone too: nothing more to do
  }
}

export function notifySafely<T>(what: string, observer: ((value: T) => void) | null, value: T): void {
  if (observer === null) return;
  try {
    observer(value);
  } catch (err) {
    reportThrow(what, err);
  }
}

export function notifyLater<T>(what: string, observer: ((value: T) => void) | null, value: T): void {
  if (observer === null) return;
  queueMicrotask(() => notifySafely(what, observer, value));
}
