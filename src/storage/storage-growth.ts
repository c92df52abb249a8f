/**
 * Automatic growth of the difference storage (`-o diff_limit=SIZE,diff_grow=SIZE`), the
 * way blksnap grows its own difference-storage file: when free space falls below the
 * threshold, extend the storage by one step in the background, again and again until
 * free space is back at the threshold or the limit is reached.
 *
 * - Ahead of need, off the write path: a crossing only starts the growth; writes go on
 *   using the space that is left. Only a write that finds no slot at all waits, and
 *   only while a growth is actually under way (waiting beats corrupting a snapshot).
 * - One growth at a time; each step is one fallocate at the end of a file (newest
 *   file first), so nothing already saved moves.
 * - Past the limit, or when the file system has no room: the crossing is announced as
 *   `low-free-space` (a script or a person may still append storage), and once the
 *   space runs out snapshots overflow as they always do: they become corrupted, the
 *   origin write succeeds.
 * - After a failed step it does not try again for RETRY_MS, so a full file system
 *   does not turn every allocation into a failed fallocate.
 * - A growth never rejects: copies wait on it (`whenMore`), and nobody else does, so a
 *   rejection would be unhandled and end the daemon. Its reports (`onGrown`,
 *   `onError`) run later, outside the step, and cannot turn a step that succeeded
 *   into a failed one.
 */
import type { DiffStorage, SpaceManager } from './diff-storage.js';
import type { DiffStorageFile } from './diff-storage-file.js';
import { notifyLater } from '../observer.js';

const RETRY_MS = 5000;

export interface GrowthReport {
  file: DiffStorageFile;
  /** Bytes added by this step. */
  bytes: number;
  /** Size of the whole difference storage after it. */
  total: number;
}

export class StorageGrowth implements SpaceManager {
  private inFlight: Promise<void> | null = null;
  private failedAt = -Infinity;
  private closed = false;
  /** Each successful step (the daemon turns it into a `storage-grown` event); called in a microtask. */
  onGrown: ((report: GrowthReport) => void) | null = null;
  /** Each failed step; called in a microtask. */
  onError: ((err: unknown) => void) | null = null;

  constructor(private readonly storage: DiffStorage, readonly limit: number, readonly step: number) {}

  /** Bytes the next step adds: a whole number of chunks, never past the limit (0: none). */
  private nextStep(): number {
    const cs = this.storage.chunkSize;
    const room = this.limit - this.storage.sizeBytes;
    return Math.floor(Math.min(this.step, room) / cs) * cs;
  }

  private canGrow(): boolean {
    return !this.closed && this.nextStep() > 0 && Date.now() - this.failedAt >= RETRY_MS;
  }

  onCrossing(): boolean {
    if (this.inFlight !== null) return true;
    if (!this.canGrow()) return false;
    this.start();
    return true;
  }

  whenMore(): Promise<void> | null {
    if (this.inFlight !== null) return this.inFlight;
    if (!this.canGrow()) return null;
    this.start();
    return this.inFlight;
  }

  private start(): void {
    const run = this.grow()
      .catch((err: unknown) => {
        // grow() handles its own errors; this is the last line against a bug in it.
        this.failedAt = Date.now();
        notifyLater('the growth error observer', this.onError, err);
      })
      .finally(() => {
        if (this.inFlight === run) this.inFlight = null;
      });
    this.inFlight = run;
  }

  /** Steps until free space is back at the threshold (and at least one chunk), or no step is possible. */
  private async grow(): Promise<void> {
    const s = this.storage;
    while (!this.closed && (s.freeBytes < s.threshold || s.freeBytes < s.chunkSize)) {
      const bytes = this.nextStep();
      if (bytes <= 0) break;
      let file: DiffStorageFile;
      try {
        file = await s.extend(bytes);
      } catch (err) {
        this.failedAt = Date.now();
        notifyLater('the growth error observer', this.onError, err);
        break;
      }
      notifyLater('the growth observer', this.onGrown, { file, bytes, total: s.sizeBytes });
    }
    // Still short of the threshold: this crossing is for somebody else to handle.
    s.announceLowSpace();
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.inFlight;
  }
}
