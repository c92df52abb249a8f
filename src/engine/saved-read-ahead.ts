/**
 * Read-ahead of saved chunks for sequential image readers.
 *
 * The difference storage is read with O_DIRECT: no kernel read-ahead, so a sequential
 * image reader would wait for the disk at every saved chunk in turn (the origin's
 * chunks get the kernel's read-ahead, being buffered). This keeps the next saved chunks
 * of such a reader in flight instead, read in large requests: the saved chunks ahead
 * are taken in storage order and read as spans of slots that lie in a row in one file
 * (after a sequential overwrite, the saved copies of every other chunk are in adjacent
 * slots: one 1 MiB read serves 2 MiB of image). The request that reaches them takes
 * them from memory.
 *
 * Spans are addressed in "slot space": byte `slot * chunkSize + offset`. A slot's
 * contents never change while a snapshot can read it, but a freed slot is reused for
 * other data: the engine calls `forgetSlot` when it allocates a slot, which drops every
 * span overlapping it (one still being read is marked invalid and never served).
 * Bounded: a fixed number of buffers of `unit` bytes, made when first needed; a span is
 * released once a reader has taken its last byte, and a span the reader skipped over is
 * reclaimed once enough newer ones have started.
 */
import { allocAligned } from '../storage/aligned.js';

interface Span {
  /** Slot-space bytes [start, end). */
  start: number;
  end: number;
  buf: Buffer;
  /** Settles true once read, false if the read failed. */
  ready: Promise<boolean>;
  settled: boolean;
  /** Served to readers (false once evicted or the slot was reused). */
  valid: boolean;
  /** Readers copying out of it right now: its buffer is not reused before they are done. */
  users: number;
  /** Value of `started` when this span began, to tell a skipped span from an upcoming one. */
  order: number;
}

export class SavedReadAhead {
  /** Largest span, bytes (a multiple of the direct-I/O alignment). */
  readonly unit: number;
  readonly capacity: number;
  private spans: Span[] = [];
  private readonly free: Buffer[] = [];
  private made = 0;
  private started = 0;

  constructor(unit: number, bytes: number) {
    this.unit = unit;
    this.capacity = Math.max(2, Math.floor(bytes / unit));
  }

  /** A valid span holding all of [start, end), or null. */
  find(start: number, end: number): Span | null {
    for (const s of this.spans) if (s.valid && s.start <= start && end <= s.end) return s;
    return null;
  }

  /**
   * Start reading [start, end) (at most `unit` bytes, aligned) with `read`, or the part
   * of it no span holds yet; nothing when all of it is held or no buffer is free. `read`
   * gets the buffer and the slot-space bytes to read into it.
   */
  start(start: number, end: number, read: (buf: Buffer, start: number, end: number) => Promise<void>): void {
    if (end - start > this.unit) return;
    for (const s of this.spans) {
      if (!s.valid || s.end <= start || end <= s.start) continue;
      if (s.start <= start) start = Math.max(start, s.end);
      else end = Math.min(end, s.start);
    }
    if (start >= end) return;
    let buf = this.free.pop();
    if (buf === undefined && this.made < this.capacity) {
      buf = allocAligned(this.unit);
      this.made++;
    }
    if (buf === undefined) {
      // Reclaim the oldest span once enough newer ones started: the reader skipped it.
      const oldest = this.spans[0];
      if (oldest === undefined || this.started - oldest.order < 2 * this.capacity) return;
      this.drop(oldest);
      buf = this.free.pop();
      if (buf === undefined) return; // still being read or copied from: next time
    }
    const span: Span = { start, end, buf, ready: Promise.resolve(false), settled: false, valid: true, users: 0, order: this.started++ };
    span.ready = read(buf, start, end).then(() => true, () => false).then((ok) => {
      span.settled = true;
      this.recycle(span);
      return ok;
    });
    this.spans.push(span);
  }

  /**
   * Copy slot-space bytes [start, end) into `into` at `at` from a span that holds them,
   * waiting for its read; false when no valid span does (read them yourself). The span
   * is released once a reader has taken its last byte.
   */
  async copyOut(start: number, end: number, into: Buffer, at: number): Promise<boolean> {
    const span = this.find(start, end);
    if (span === null) return false;
    span.users++;
    try {
      const ok = await span.ready;
      if (!ok || !span.valid) return false;
      span.buf.copy(into, at, start - span.start, end - span.start);
      if (end === span.end) this.drop(span);
      return true;
    } finally {
      span.users--;
      this.recycle(span);
    }
  }

  /** Slot-space bytes [start, end) are about to hold new data: drop every span overlapping them. */
  forget(start: number, end: number): void {
    if (this.spans.length === 0) return;
    for (const s of [...this.spans]) if (s.start < end && start < s.end) this.drop(s);
  }

  /** Off the list and never served again; its buffer comes back once nobody uses it. */
  private drop(span: Span): void {
    span.valid = false;
    const i = this.spans.indexOf(span);
    if (i >= 0) this.spans.splice(i, 1);
    this.recycle(span);
  }

  private recycle(span: Span): void {
    if (!span.valid && span.settled && span.users === 0 && span.buf.length > 0) {
      this.free.push(span.buf);
      span.buf = Buffer.alloc(0); // handed back once only
    }
  }
}
