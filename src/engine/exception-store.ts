/**
 * The storage seam under the copy-on-write: where exceptions (saved copies of origin
 * chunks, and snapshots' private chunks) live, in the style of dm-snapshot's exception
 * store (`dm-exception-store.h`). The per-origin part (chunk-copy.ts, image-writes.ts,
 * image-reads.ts) decides what to copy, when, and which copy serves which snapshot
 * (copy-table.ts, private-chunks.ts); the store only hands out slots and moves bytes.
 *
 * One exception's slot, as the store sees it:
 *
 *     free ──prepare──> prepared ──commit (whole chunk)──> committed ──drop──> free
 *                          └──────────────drop (the copy failed or was not needed)──┘
 *
 *   prepare   a slot for an exception about to be made; may wait for the space manager
 *             (automatic growth); ENOSPC when no space is coming.
 *   prepareRun  1..n slots in a row in one file, for a run of adjacent chunks copied
 *             with one write (chunk-copy.ts); the rest of the run asks again.
 *             `tryPrepareRun` is the same without waiting (null: none now).
 *   commit    write the whole chunk into the slot; when it resolves the data is on the
 *             storage (O_DIRECT), so the caller may record the exception.
 *   commitRun   the same for a run of slots from prepareRun: one O_DIRECT write.
 *   commitPart  rewrite aligned blocks of a committed slot. Only a snapshot's private
 *             chunk is ever rewritten: a saved copy serves several snapshots and is
 *             written once, whole.
 *   read      aligned bytes of a committed slot, running on into the following slots as
 *             far as `contiguous` allows (dm remaps such reads to the COW device).
 *   contiguous  how many slots from a slot on lie in a row in one file (image reads and
 *             read-ahead read such slots with one request).
 *   drop      give the slot back; its bytes are garbage from then on.
 *   usage     how much space is in use, for the status and tests.
 *
 * The store keeps no mapping of its own: a slot number is all the engine keeps per
 * exception. dm's lookup (which exception serves a chunk of a snapshot) is therefore
 * the diff area's: the shared copies' table (copy-table.ts, asked through
 * chunk-copy.ts `startRead`/`savedSlot`) and each snapshot's private chunks
 * (private-chunks.ts); this seam moves only space and bytes. A slot freed by `drop` may come back from a later `prepare` holding other
 * data; caches of slot contents are the caller's to invalidate (see `slotReused`).
 */
import type { DiffStorage, SlotRun } from '../storage/diff-storage.js';

export type { SlotRun } from '../storage/diff-storage.js';

export interface ExceptionStoreUsage {
  /** Bytes of all slots. */
  size: number;
  /** Bytes of slots prepared and not dropped. */
  used: number;
  free: number;
}

export interface ExceptionStore {
  readonly chunkSize: number;
  prepare(): Promise<number>;
  prepareRun(max: number): Promise<SlotRun>;
  tryPrepareRun(max: number): SlotRun | null;
  commit(slot: number, chunk: Buffer): Promise<void>;
  commitRun(slot: number, count: number, chunks: Buffer): Promise<void>;
  commitPart(slot: number, offset: number, length: number, data: Buffer): Promise<void>;
  read(slot: number, offset: number, length: number, into: Buffer): Promise<void>;
  contiguous(slot: number, max: number): number;
  drop(slot: number): void;
  usage(): ExceptionStoreUsage;
}

/**
 * The exception store over the difference storage's slots (diff-storage.ts). It calls
 * the storage's methods at each use rather than binding them once, so a test that
 * replaces one of them (fault injection) reaches the engine.
 */
export class DiffStorageExceptions implements ExceptionStore {
  constructor(private readonly storage: DiffStorage) {}

  get chunkSize(): number {
    return this.storage.chunkSize;
  }

  prepare(): Promise<number> {
    return this.storage.allocate();
  }

  prepareRun(max: number): Promise<SlotRun> {
    return this.storage.allocateRun(max);
  }

  tryPrepareRun(max: number): SlotRun | null {
    return this.storage.tryAllocateRun(max);
  }

  commit(slot: number, chunk: Buffer): Promise<void> {
    return this.storage.writeChunk(slot, chunk);
  }

  commitRun(slot: number, count: number, chunks: Buffer): Promise<void> {
    return this.storage.writeSlots(slot, count, chunks);
  }

  commitPart(slot: number, offset: number, length: number, data: Buffer): Promise<void> {
    return this.storage.writeChunkPart(slot, offset, length, data);
  }

  read(slot: number, offset: number, length: number, into: Buffer): Promise<void> {
    return this.storage.readChunkPart(slot, offset, length, into);
  }

  contiguous(slot: number, max: number): number {
    return this.storage.contiguousSlots(slot, max);
  }

  drop(slot: number): void {
    this.storage.release(slot);
  }

  usage(): ExceptionStoreUsage {
    const size = this.storage.sizeBytes;
    const free = this.storage.freeBytes;
    return { size, used: size - free, free };
  }
}
