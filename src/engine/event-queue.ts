/**
 * The event stream: a bounded ring of the most recent events, plus any number of
 * followers, each with its own cursor.
 *
 * Emitting never waits for anybody: the ring overwrites its oldest entry, and a
 * follower whose cursor fell off the ring learns how many events it lost (an
 * `events-lost` line) instead of a silent gap. (blksnap's own queue is unbounded; a
 * daemon must not grow without limit because nobody reads its events.)
 */
import { notifySafely } from '../observer.js';

export const EVENT_BACKLOG = 1024;
/** Bounds for `-o event_backlog=N`. */
export const MIN_EVENT_BACKLOG = 1;
export const MAX_EVENT_BACKLOG = 1_000_000;

export type EventType =
  | 'snapshot-taken' | 'snapshot-destroyed' | 'low-free-space' | 'corrupted'
  | 'storage-appended' | 'storage-grown' | 'cbt-reset' | 'log-failed' | 'frozen' | 'thawed';

export type EventFields = Record<string, string | number | boolean | null>;

export interface BlksnapEvent {
  seq: number;
  time: string;
  type: EventType;
  fields: EventFields;
}

export function formatEvent(e: BlksnapEvent): string {
  return `${JSON.stringify({ seq: e.seq, time: e.time, type: e.type, ...e.fields })}\n`;
}

export class EventQueue {
  private readonly ring: Array<BlksnapEvent | undefined>;
  private nextSeq = 1;
  private readonly wakers = new Set<() => void>();
  /** Extra observer (the daemon's log); called after the followers, and never allowed to throw into `emit`. */
  onEvent: ((e: BlksnapEvent) => void) | null = null;

  constructor(readonly capacity = EVENT_BACKLOG) {
    if (!Number.isSafeInteger(capacity) || capacity < MIN_EVENT_BACKLOG || capacity > MAX_EVENT_BACKLOG) {
      throw new RangeError(`event backlog must be ${MIN_EVENT_BACKLOG}..${MAX_EVENT_BACKLOG}, not ${capacity}`);
    }
    this.ring = new Array<BlksnapEvent | undefined>(capacity);
  }

  emit(type: EventType, fields: EventFields): BlksnapEvent {
    const event: BlksnapEvent = { seq: this.nextSeq++, time: new Date().toISOString(), type, fields };
    this.ring[event.seq % this.capacity] = event;
    const wakers = [...this.wakers];
    this.wakers.clear();
    for (const wake of wakers) wake();
    notifySafely('the event observer', this.onEvent, event);
    return event;
  }

  /** The seq the next event will carry. */
  get headSeq(): number {
    return this.nextSeq;
  }

  /** The oldest seq still in the ring. */
  get oldestSeq(): number {
    return Math.max(1, this.nextSeq - this.capacity);
  }

  get(seq: number): BlksnapEvent | undefined {
    if (seq < this.oldestSeq || seq >= this.nextSeq) return undefined;
    return this.ring[seq % this.capacity];
  }

  /** Resolves at the next emit (or never, if none comes: pair it with a timeout). */
  waitForNext(): { promise: Promise<void>; cancel: () => void } {
    let wake!: () => void;
    const promise = new Promise<void>((resolve) => (wake = resolve));
    this.wakers.add(wake);
    return { promise, cancel: () => this.wakers.delete(wake) };
  }
}

/**
 * The line a follower gets in place of the events that left the ring before it read
 * them: `count` of them, seqs `from_seq`..`to_seq`. It has no `seq` of its own (it is
 * not an event of the mount, only news for this one reader); the next line carries
 * seq `to_seq + 1`.
 */
export function formatEventsLost(fromSeq: number, toSeq: number): string {
  return `${JSON.stringify({ type: 'events-lost', time: new Date().toISOString(), count: toSeq - fromSeq + 1, from_seq: fromSeq, to_seq: toSeq })}\n`;
}

/**
 * One follower's position in the stream. `take` returns the text of the events it has
 * not seen yet (starting with one `events-lost` line when it fell behind the ring).
 * The ring is only read synchronously here, so nothing can overwrite an entry between
 * the check against `oldestSeq` and the read of it.
 */
export class EventCursor {
  private next: number;

  constructor(private readonly queue: EventQueue) {
    this.next = queue.oldestSeq;
  }

  take(maxEvents = 256): string {
    let text = '';
    const oldest = this.queue.oldestSeq;
    if (this.next < oldest) {
      text += formatEventsLost(this.next, oldest - 1);
      this.next = oldest;
    }
    for (let n = 0; n < maxEvents && this.next < this.queue.headSeq; n++) {
      const e = this.queue.get(this.next++);
      if (e !== undefined) text += formatEvent(e);
    }
    return text;
  }

  get pending(): boolean {
    return this.next < this.queue.headSeq;
  }
}
