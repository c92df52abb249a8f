/**
 * The difference storage: a pool of preallocated files carved into chunk-sized slots.
 *
 * Allocation is a bump pointer over the files in order, plus a free list of slots
 * released by destroyed snapshots (reused first, so space freed by rmdir is used again
 * before the pool grows). Slots are numbered across all files; a slot number is all the
 * engine keeps per saved chunk.
 *
 * It also watches free space against a threshold and reports each crossing below it
 * once (edge-triggered), the way blksnap raises its low-space event.
 */
import { BlksnapError } from '../errors.js';
import { DiffStorageFile } from './diff-storage-file.js';

interface Extent {
  file: DiffStorageFile;
  firstSlot: number;
  slotCount: number;
}

export interface DiffStorageStats {
  files: Array<{ path: string; size: number; slots: number }>;
  chunk_size: number;
  size: number;
  used: number;
  free: number;
  threshold: number;
}

export interface LowSpaceNotice {
  freeBytes: number;
  /** How much to append to get back above the threshold. */
  requestedBytes: number;
}

export class DiffStorage {
  readonly chunkSize: number;
  readonly threshold: number;
  private readonly extents: Extent[] = [];
  private totalSlots = 0;
  private nextUnused = 0;
  private readonly freeSlots: number[] = [];
  private usedSlots = 0;
  private belowThreshold = false;
  /** Called once each time free space falls below the threshold. */
  onLowSpace: ((notice: LowSpaceNotice) => void) | null = null;

  constructor(chunkSize: number, threshold: number) {
    this.chunkSize = chunkSize;
    this.threshold = threshold;
  }

  /** Add a file to the pool; its whole chunks become allocatable at once. */
  addFile(file: DiffStorageFile): void {
    const slotCount = Math.floor(file.size / this.chunkSize);
    this.extents.push({ file, firstSlot: this.totalSlots, slotCount });
    this.totalSlots += slotCount;
    if (this.freeBytes >= this.threshold) this.belowThreshold = false;
  }

  get files(): readonly DiffStorageFile[] {
    return this.extents.map((e) => e.file);
  }

  get freeBytes(): number {
    return (this.totalSlots - this.usedSlots) * this.chunkSize;
  }

  /** Take one slot; ENOSPC when none is left. */
  allocate(): number {
    let slot = this.freeSlots.pop();
    if (slot === undefined) {
      if (this.nextUnused >= this.totalSlots) {
        throw BlksnapError.of('ENOSPC', 'difference storage is full');
      }
      slot = this.nextUnused++;
    }
    this.usedSlots++;
    this.checkThreshold();
    return slot;
  }

  release(slot: number): void {
    this.freeSlots.push(slot);
    this.usedSlots--;
    if (this.freeBytes >= this.threshold) this.belowThreshold = false;
  }

  private checkThreshold(): void {
    const free = this.freeBytes;
    if (free < this.threshold && !this.belowThreshold) {
      this.belowThreshold = true;
      this.onLowSpace?.({ freeBytes: free, requestedBytes: this.threshold - free });
    }
  }

  private locate(slot: number): { file: DiffStorageFile; position: number } {
    for (const e of this.extents) {
      if (slot >= e.firstSlot && slot < e.firstSlot + e.slotCount) {
        return { file: e.file, position: (slot - e.firstSlot) * this.chunkSize };
      }
    }
    throw BlksnapError.of('EIO', `difference storage slot ${slot} does not exist`);
  }

  /** Write a whole chunk (an aligned buffer of chunkSize bytes) into a slot. */
  async writeChunk(slot: number, buf: Buffer): Promise<void> {
    const { file, position } = this.locate(slot);
    await file.write(buf, this.chunkSize, position);
  }

  /** Read `length` bytes at `offset` within a slot; offset and length are aligned. */
  async readChunkPart(slot: number, offset: number, length: number, buf: Buffer): Promise<void> {
    const { file, position } = this.locate(slot);
    await file.read(buf, length, position + offset);
  }

  stats(): DiffStorageStats {
    return {
      files: this.extents.map((e) => ({ path: e.file.path, size: e.file.size, slots: e.slotCount })),
      chunk_size: this.chunkSize,
      size: this.totalSlots * this.chunkSize,
      used: this.usedSlots * this.chunkSize,
      free: this.freeBytes,
      threshold: this.threshold,
    };
  }

  async close(): Promise<void> {
    for (const e of this.extents) await e.file.close();
    this.extents.length = 0;
  }
}
