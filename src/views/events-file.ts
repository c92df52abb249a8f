/**
 * /events: a stream. A read returns the events this reader has not seen yet; when there
 * are none it waits for the next one, or until the kernel interrupts the request (the
 * reader was killed or its call interrupted): then it answers EINTR at once. Under a
 * transport that cannot pass interrupts on (fuse-native), a wait is answered with
 * EINTR after about a second instead, because a killed reader stays stuck in the kernel
 * until the daemon answers (cat, dd, shells and Python retry EINTR, so a live reader
 * does not notice). Waiting ties up nothing but that one request.
 */
import { EventCursor, type EventQueue } from '../engine/event-queue.js';
import { BlksnapError } from '../errors.js';
import type { FileView, IoRequest, ReadTarget } from './file-view.js';

const WAIT_MS = 1000;

export class EventsFile implements FileView {
  private readonly cursor: EventCursor;
  private leftover: Buffer | null = null;
  /** Waits in progress on this handle (normally at most one; two threads may share a descriptor). */
  private readonly waits = new Set<() => void>();
  private released = false;

  constructor(private readonly queue: EventQueue) {
    this.cursor = new EventCursor(queue);
  }

  async read(into: ReadTarget, length: number, _position: number, req: IoRequest): Promise<number> {
    if (!this.hasLeftover && !this.cursor.pending && !this.released) await this.waitForEvent(req);
    if (!this.hasLeftover) {
      const text = this.cursor.take();
      if (text.length === 0) throw BlksnapError.of('EINTR', 'no event yet');
      this.leftover = Buffer.from(text, 'utf8');
    }
    const leftover = this.leftover ?? Buffer.alloc(0);
    const n = Math.min(length, leftover.length);
    leftover.copy(into(n), 0, 0, n);
    this.leftover = leftover.subarray(n);
    return n;
  }

  /** Text already taken from the queue but not yet read (a reader with a small buffer). */
  private get hasLeftover(): boolean {
    return this.leftover !== null && this.leftover.length > 0;
  }

  /** Resolves at the next event, at an interrupt (or after WAIT_MS without them), or at release. */
  private waitForEvent(req: IoRequest): Promise<void> {
    return new Promise<void>((resolve) => {
      const next = this.queue.waitForNext();
      const done = (): void => {
        next.cancel();
        if (timer !== null) clearTimeout(timer);
        this.waits.delete(done);
        resolve();
      };
      const timer = req.interruptible ? null : setTimeout(done, WAIT_MS);
      this.waits.add(done);
      req.onInterrupt(done);
      next.promise.then(done, done);
    });
  }

  write(): Promise<number> {
    return Promise.reject(BlksnapError.of('EACCES', '/events is read-only'));
  }

  async fsync(): Promise<void> {}

  release(): void {
    this.released = true;
    for (const done of [...this.waits]) done();
  }
}
