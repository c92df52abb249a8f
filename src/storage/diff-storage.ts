/**
 * The difference storage: a pool of preallocated files carved into chunk-sized slots.
 *
 * Allocation is a bump pointer over the pool's extents in order, plus a free list of
 * slots released by destroyed snapshots (reused first, so space freed by rmdir is used
 * again before the pool grows). Slots are numbered across all extents; a slot number
 * is all the engine keeps per saved chunk. An extent is a run of slots in one file at
 * one offset: a file appended with storage-append is one new extent, and a file grown
 * at its end (automatic growth) gets one more extent, so slots handed out earlier
 * never move.
 *
 * It also watches free space against a threshold and reports each crossing below it
 * once (edge-triggered), the way blksnap raises its low-space event. A space manager
 * (automatic growth, see storage-growth.ts) may take a crossing over; it is then
 * announced only if the manager cannot restore the space.
 */
import { BlksnapError } from '../errors.js';
import type { DiffStorageFile } from './diff-storage-file.js';
import { notifyLater } from '../observer.js';

interface Extent {
  file: DiffStorageFile;
  /** Byte offset of the extent's first slot in its file. */
  fileOffset: number;
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
  /** Automatic growth: the size it may grow to, and by how much at a time (null: off). */
  limit: number | null;
  grow_step: number | null;
}

export interface LowSpaceNotice {
  freeBytes: number;
  /** How much to append to get back above the threshold. */
  requestedBytes: number;
}

/** Something that can add space on its own (automatic growth). */
export interface SpaceManager {
  readonly limit: number;
  readonly step: number;
  /** At a crossing below the threshold: true when it takes care of it (the crossing is not announced now). */
  onCrossing(): boolean;
  /** Out of slots: settles when more space may have come, or null when none is coming. */
  whenMore(): Promise<void> | null;
  close(): Promise<void>;
}

export class DiffStorage {
  readonly chunkSize: number;
  readonly threshold: number;
  private readonly extents: Extent[] = [];
  private totalSlots = 0;
  private nextUnused = 0;
  private readonly freeSlots: number[] = [];
  private usedSlots = 0;
  /** Below the threshold since the last crossing (re-armed when free space is back). */
  private belowThreshold = false;
  /** The current crossing has been reported through onLowSpace. */
  private lowSpaceAnnounced = false;
  /**
   * Called once each time free space falls below the threshold; later, outside the
   * allocation that crossed it (a throwing observer cannot cost that allocation).
   */
  onLowSpace: ((notice: LowSpaceNotice) => void) | null = null;
  /** Automatic growth, when configured. */
  manager: SpaceManager | null = null;

  constructor(chunkSize: number, threshold: number) {
    this.chunkSize = chunkSize;
    this.threshold = threshold;
  }

  /** Add a file to the pool; its whole chunks become allocatable at once. */
  addFile(file: DiffStorageFile): void {
    this.addExtent(file, file.dataOffset, Math.floor(file.size / this.chunkSize));
  }

  private addExtent(file: DiffStorageFile, fileOffset: number, slotCount: number): void {
    this.extents.push({ file, fileOffset, firstSlot: this.totalSlots, slotCount });
    this.totalSlots += slotCount;
    this.rearm();
  }

  /**
   * Grow the pool by `bytes` (whole chunks) at the end of one of its files, trying the
   * newest file first (the space most recently added is the likeliest to have room).
   * Returns the file that grew; throws the newest file's error when none could.
   */
  async extend(bytes: number): Promise<DiffStorageFile> {
    const slots = Math.floor(bytes / this.chunkSize);
    if (slots <= 0) throw BlksnapError.of('EINVAL', `cannot grow the difference storage by less than one chunk (${this.chunkSize} bytes)`);
    let firstError: unknown = null;
    for (const file of [...this.files].reverse()) {
      const offset = file.end;
      try {
        await file.extend(slots * this.chunkSize);
      } catch (err) {
        firstError ??= err;
        continue;
      }
      this.addExtent(file, offset, slots);
      return file;
    }
    throw firstError ?? BlksnapError.of('ENOSPC', 'the difference storage has no file to grow');
  }

  get files(): readonly DiffStorageFile[] {
    const seen = new Set<DiffStorageFile>();
    for (const e of this.extents) seen.add(e.file);
    return [...seen];
  }

  get freeBytes(): number {
    return (this.totalSlots - this.usedSlots) * this.chunkSize;
  }

  get sizeBytes(): number {
    return this.totalSlots * this.chunkSize;
  }

  /** Take one slot without waiting; null when none is left. */
  private take(): number | null {
    let slot = this.freeSlots.pop();
    if (slot === undefined) {
      if (this.nextUnused >= this.totalSlots) return null;
      slot = this.nextUnused++;
    }
    this.usedSlots++;
    this.checkThreshold();
    return slot;
  }

  /**
   * Take one slot. When none is left and automatic growth is adding space, wait for it;
   * ENOSPC when no more space is coming.
   */
  async allocate(): Promise<number> {
    for (;;) {
      const slot = this.take();
      if (slot !== null) return slot;
      const more = this.manager?.whenMore() ?? null;
      if (more === null) throw BlksnapError.of('ENOSPC', 'difference storage is full');
      const size = this.totalSlots;
      await more;
      // Nothing was added (the step failed): do not ask again and again.
      if (this.totalSlots === size) throw BlksnapError.of('ENOSPC', 'difference storage is full and could not grow');
    }
  }

  release(slot: number): void {
    this.freeSlots.push(slot);
    this.usedSlots--;
    this.rearm();
  }

  private rearm(): void {
    if (this.freeBytes >= this.threshold) {
      this.belowThreshold = false;
      this.lowSpaceAnnounced = false;
    }
  }

  private checkThreshold(): void {
    if (this.freeBytes < this.threshold && !this.belowThreshold) {
      this.belowThreshold = true;
      if (this.manager?.onCrossing() === true) return;
      this.announceLowSpace();
    }
  }

  /**
   * Report the current crossing, once. The space manager calls this when it could not
   * bring free space back above the threshold (limit reached, growth failed).
   */
  announceLowSpace(): void {
    if (!this.belowThreshold || this.lowSpaceAnnounced) return;
    this.lowSpaceAnnounced = true;
    const free = this.freeBytes;
    notifyLater('the low-space observer', this.onLowSpace, { freeBytes: free, requestedBytes: Math.max(0, this.threshold - free) });
  }

  private locate(slot: number): { file: DiffStorageFile; position: number } {
    for (const e of this.extents) {
      if (slot >= e.firstSlot && slot < e.firstSlot + e.slotCount) {
        return { file: e.file, position: e.fileOffset + (slot - e.firstSlot) * this.chunkSize };
      }
    }
    throw BlksnapError.of('EIO', `difference storage slot ${slot} does not exist`);
  }

  /** Write a whole chunk (an aligned buffer of chunkSize bytes) into a slot. */
  async writeChunk(slot: number, buf: Buffer): Promise<void> {
    const { file, position } = this.locate(slot);
    await file.write(buf, this.chunkSize, position);
  }

  /**
   * Write `length` bytes at `offset` within a slot; offset, length and buf are aligned.
   * Only a snapshot's private chunks (image writes) are written in part: a saved copy
   * shared by several snapshots is written once, whole, and never again.
   */
  async writeChunkPart(slot: number, offset: number, length: number, buf: Buffer): Promise<void> {
    const { file, position } = this.locate(slot);
    await file.write(buf, length, position + offset);
  }

  /** Read `length` bytes at `offset` within a slot; offset and length are aligned. */
  async readChunkPart(slot: number, offset: number, length: number, buf: Buffer): Promise<void> {
    const { file, position } = this.locate(slot);
    await file.read(buf, length, position + offset);
  }

  stats(): DiffStorageStats {
    const slotsOf = (f: DiffStorageFile): number => this.extents.filter((e) => e.file === f).reduce((n, e) => n + e.slotCount, 0);
    return {
      files: this.files.map((f) => ({ path: f.path, size: f.size, slots: slotsOf(f) })),
      chunk_size: this.chunkSize,
      size: this.sizeBytes,
      used: this.usedSlots * this.chunkSize,
      free: this.freeBytes,
      threshold: this.threshold,
      limit: this.manager?.limit ?? null,
      grow_step: this.manager?.step ?? null,
    };
  }

  /** Stop growth (waiting for one in flight), then close the files. */
  async close(): Promise<void> {
    await this.manager?.close();
    for (const f of this.files) await f.close();
    this.extents.length = 0;
  }
}
