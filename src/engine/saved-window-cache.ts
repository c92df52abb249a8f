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
 * reused for other data. Keys therefore carry the slot's allocation generation: an entry
 * from a slot's previous life can never be hit again, and simply ages out of the LRU.
 */
import { LRUCache } from 'lru-cache';
import { PagedU32 } from './paged-u32.js';

export const DEFAULT_WINDOW_CACHE_BYTES = 32 * 1024 * 1024;

export class SavedWindowCache {
  private readonly lru: LRUCache<string, Buffer>;
  private readonly generations = new PagedU32();
  private nextGeneration = 1;

  constructor(maxBytes = DEFAULT_WINDOW_CACHE_BYTES) {
    this.lru = new LRUCache<string, Buffer>({ maxSize: maxBytes, sizeCalculation: (b) => b.length });
  }

  /** A slot now holds new data: forget everything read from its previous life. */
  allocated(slot: number): void {
    this.generations.set(slot, this.nextGeneration);
    this.nextGeneration = (this.nextGeneration % 0xfffffffe) + 1;
  }

  private key(slot: number, window: number): string {
    return `${slot}:${this.generations.get(slot)}:${window}`;
  }

  get(slot: number, window: number): Buffer | undefined {
    return this.lru.get(this.key(slot, window));
  }

  set(slot: number, window: number, data: Buffer): void {
    this.lru.set(this.key(slot, window), data);
  }

  get bytes(): number {
    return this.lru.calculatedSize;
  }
}
