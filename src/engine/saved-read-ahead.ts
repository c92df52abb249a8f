/**
 * Read-ahead of saved chunks for sequential image reads.
 *
 * FUSE (libfuse 2, direct_io) hands the daemon a sequential image read one request of
 * at most 128 KiB at a time, and every saved chunk in it is an O_DIRECT read of the
 * difference storage: no kernel read-ahead, so each request waits for the disk in turn
 * (the origin's chunks get the kernel's read-ahead, being buffered). This keeps a small
 * window of the next saved windows in flight instead; the request that reaches them
 * takes them from memory.
 *
 * Entries are keyed by slot and window. A slot's contents never change while a snapshot
 * can read it, but a freed slot is reused for other data: the engine calls `forgetSlot`
 * when it allocates a slot, which drops that slot's entries (one still being read is
 * marked invalid and never served). Bounded: a fixed set of buffers; an entry the
 * reader skipped over is reclaimed once a full window of newer ones has started.
 */
import { allocAligned } from '../storage/aligned.js';

interface Entry {
  buf: Buffer;
  /** Settles true once read, false if the read failed. */
  ready: Promise<boolean>;
  valid: boolean;
  /** Value of `started` when this entry began, to tell a skipped entry from an upcoming one. */
  order: number;
}

export class SavedReadAhead {
  readonly windowSize: number;
  readonly windowsPerChunk: number;
  readonly capacity: number;
  private readonly entries = new Map<number, Entry>();
  private readonly free: Buffer[] = [];
  private started = 0;

  constructor(chunkSize: number, windowSize: number, bytes: number) {
    this.windowSize = windowSize;
    this.windowsPerChunk = chunkSize / windowSize;
    this.capacity = Math.max(2, Math.floor(bytes / windowSize));
    for (let i = 0; i < this.capacity; i++) this.free.push(allocAligned(windowSize));
  }

  private key(slot: number, window: number): number {
    return slot * this.windowsPerChunk + window / this.windowSize;
  }

  has(slot: number, window: number): boolean {
    return this.entries.has(this.key(slot, window));
  }

  /** Start reading one window of a slot with `read`, unless it is held already or no buffer is free. */
  start(slot: number, window: number, read: (buf: Buffer) => Promise<void>): void {
    const key = this.key(slot, window);
    if (this.entries.has(key)) return;
    if (this.free.length === 0) {
      const oldest = this.entries.entries().next();
      if (oldest.done === true || this.started - oldest.value[1].order < 2 * this.capacity) return;
      this.evict(oldest.value[0]);
      if (this.free.length === 0) return; // still being read: next time
    }
    const buf = this.free.pop();
    if (buf === undefined) return;
    this.entries.set(key, { buf, ready: read(buf).then(() => true, () => false), valid: true, order: this.started++ });
  }

  /**
   * The window's contents if a valid read-ahead holds them (the entry is taken: give the
   * buffer back with `done`), else null (read it yourself).
   */
  async take(slot: number, window: number): Promise<Buffer | null> {
    const key = this.key(slot, window);
    const entry = this.entries.get(key);
    if (entry === undefined) return null;
    this.entries.delete(key);
    const ok = await entry.ready;
    if (ok && entry.valid) return entry.buf;
    this.free.push(entry.buf);
    return null;
  }

  done(buf: Buffer): void {
    this.free.push(buf);
  }

  /** `slot` is about to hold new data: drop whatever was read from its previous life. */
  forgetSlot(slot: number): void {
    if (this.entries.size === 0) return;
    for (let w = 0; w < this.windowsPerChunk; w++) this.evict(slot * this.windowsPerChunk + w);
  }

  private evict(key: number): void {
    const entry = this.entries.get(key);
    if (entry === undefined) return;
    this.entries.delete(key);
    entry.valid = false;
    void entry.ready.then(() => this.free.push(entry.buf));
  }
}
