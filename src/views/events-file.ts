/**
 * /events: a stream. A read returns the events this reader has not seen yet; when there
 * are none it waits for the next one. A wait is answered with EINTR after about a
 * second, because a reader that was killed while its read was pending stays stuck in
 * the kernel until the daemon answers (cat, dd, shells and Python retry EINTR, so a
 * live reader does not notice). Waiting ties up nothing but that one request.
 */
import { EventCursor, type EventQueue } from '../engine/event-queue.js';
import { BlksnapError } from '../errors.js';
import type { FileView } from './file-view.js';

const WAIT_MS = 1000;

export class EventsFile implements FileView {
  private readonly cursor: EventCursor;
  private leftover: Buffer | null = null;
  private cancelWait: (() => void) | null = null;

  constructor(private readonly queue: EventQueue) {
    this.cursor = new EventCursor(queue);
  }

  async read(buf: Buffer, length: number): Promise<number> {
    if (this.leftover === null || this.leftover.length === 0) {
      if (!this.cursor.pending) await this.waitForEvent();
      const text = this.cursor.take();
      if (text.length === 0) throw BlksnapError.of('EINTR', 'no event yet');
      this.leftover = Buffer.from(text, 'utf8');
    }
    const n = Math.min(length, this.leftover.length);
    this.leftover.copy(buf, 0, 0, n);
    this.leftover = this.leftover.subarray(n);
    return n;
  }

  private async waitForEvent(): Promise<void> {
    const { promise, cancel } = this.queue.waitForNext();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((resolve) => (timer = setTimeout(resolve, WAIT_MS)));
    this.cancelWait = cancel;
    try {
      await Promise.race([promise, timeout]);
    } finally {
      clearTimeout(timer);
      cancel();
      this.cancelWait = null;
    }
  }

  write(): Promise<number> {
    return Promise.reject(BlksnapError.of('EACCES', '/events is read-only'));
  }

  async fsync(): Promise<void> {}

  release(): void {
    this.cancelWait?.();
  }
}
