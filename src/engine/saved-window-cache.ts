/**
 * Recently read windows of saved chunks, kept for small image reads.
 *
 * A loop device or e2fsck over a snapshot image reads 4 KiB at a time, and with
 * direct_io every one of those reaches the daemon. For a saved chunk each would be an
 * O_DIRECT read of its own; instead a small read fetches the whole aligned window once
 * and the neighbours are served from memory. Large (sequential) reads bypass the cache,
 * so streaming a backup neither allocates nor evicts anything.
 *
 * A slot's contents never change while a snapshot can read it, but a freed slot is
 * reused for other data: whoever is about to fill a slot calls `allocated`, which drops
 * that slot's windows. The cache keeps, per slot that has windows in it, which ones, so
 * that costs nothing for the (many) slots it holds nothing of: its memory follows its
 * own size, never the number of saved chunks.
 */
import { LRUCache } from 'lru-cache';

export const DEFAULT_WINDOW_CACHE_BYTES = 32 * 1024 * 1024;

export class SavedWindowCache {
  private readonly lru: LRUCache<string, Buffer>;
  /** slot -> the window offsets of it that the LRU holds. */
  private readonly bySlot = new Map<number, Set<number>>();

  constructor(maxBytes = DEFAULT_WINDOW_CACHE_BYTES) {
    this.lru = new LRUCache<string, Buffer>({
      maxSize: maxBytes,
      sizeCalculation: (b) => b.length,
      // Evicted, replaced or deleted: forget it in the slot's set too.
      dispose: (_value, key) => this.forget(key),
    });
  }

  private static key(slot: number, window: number): string {
    return `${slot}:${window}`;
  }

  private forget(key: string): void {
    const colon = key.indexOf(':');
    const slot = Number(key.slice(0, colon));
    const windows = this.bySlot.get(slot);
    if (windows === undefined) return;
    windows.delete(Number(key.slice(colon + 1)));
    if (windows.size === 0) this.bySlot.delete(slot);
  }

  /** A slot now holds new data: forget everything read from its previous life. */
  allocated(slot: number): void {
    const windows = this.bySlot.get(slot);
    if (windows === undefined) return;
    for (const window of [...windows]) this.lru.delete(SavedWindowCache.key(slot, window));
    this.bySlot.delete(slot);
  }

  get(slot: number, window: number): Buffer | undefined {
    return this.lru.get(SavedWindowCache.key(slot, window));
  }

  set(slot: number, window: number, data: Buffer): void {
    this.lru.set(SavedWindowCache.key(slot, window), data);
    let windows = this.bySlot.get(slot);
    if (windows === undefined) this.bySlot.set(slot, (windows = new Set()));
    windows.add(window);
  }

  get bytes(): number {
    return this.lru.calculatedSize;
  }
}
