/**
 * The difference storage: a pool of preallocated files carved into chunk-sized slots.
 *
 * Allocation is a bump pointer over the pool's extents in order, plus a free list of
 * slots released by destroyed snapshots (reused first, so space freed by rmdir is used
 * again before fresh space). Slots are numbered across all extents; a slot number is all
 * the engine keeps per saved chunk. An extent is a run of slots in one file at one
 * offset: a file appended with storage-append is one new extent, and a file grown at its
 * end (automatic growth) gets one more extent (merged with the one before when that one
 * ends exactly there, in the same file), so slots handed out earlier never move.
 *
 * Runs: copy-on-write saves adjacent chunks with one O_DIRECT write, so it asks for up
 * to n slots at once (`allocateRun`) and gets the longest run it can that is contiguous
 * in one file (at least one slot): from the free list (kept sorted, lowest first) when
 * it has any, else from the bump pointer up to the end of its extent. Reads and writes
 * may span the slots of such a run (`contiguousSlots` says how far one may go).
 *
 * It also watches free space against a threshold and reports each crossing below it
 * once (edge-triggered), the way blksnap raises its low-space event. A space manager
 * (automatic growth, see storage-growth.ts) may take a crossing over; it is then
 * announced only if the manager cannot restore the space. Space is counted in slots:
 * a run of n slots is n slots used, exactly as n single allocations would be.
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

/** Slot numbers stay below this: the engine reserves the values from here on (copy-table.ts). */
export const MAX_SLOTS = 0xfffffffe;

/** `count` slots from `slot` on, contiguous in one file. */
export interface SlotRun {
  slot: number;
  count: number;
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
  /** Released slots; sorted descending (lowest last, taken first) unless `freeUnsorted`. */
  private readonly freeSlots: number[] = [];
  private freeUnsorted = false;
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
    if (this.totalSlots + slotCount > MAX_SLOTS) throw BlksnapError.of('EFBIG', `the difference storage cannot hold more than ${MAX_SLOTS} chunks`);
    const last = this.extents[this.extents.length - 1];
    if (last !== undefined && last.file === file && last.fileOffset + last.slotCount * this.chunkSize === fileOffset) {
      // The same file grown at its end: one extent, so runs may cross the old end.
      last.slotCount += slotCount;
    } else {
      this.extents.push({ file, fileOffset, firstSlot: this.totalSlots, slotCount });
    }
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

  /** Take up to `max` slots contiguous in one file, without waiting; null when none is left. */
  tryAllocateRun(max: number): SlotRun | null {
    let run: SlotRun | null = null;
    if (this.freeSlots.length > 0) {
      if (this.freeUnsorted) {
        this.freeSlots.sort((a, b) => b - a);
        this.freeUnsorted = false;
      }
      const slot = this.freeSlots.pop() ?? 0;
      const room = this.contiguousSlots(slot, max);
      let count = 1;
      while (count < room && this.freeSlots[this.freeSlots.length - 1] === slot + count) {
        this.freeSlots.pop();
        count++;
      }
      run = { slot, count };
    } else if (this.nextUnused < this.totalSlots) {
      const slot = this.nextUnused;
      const count = this.contiguousSlots(slot, max);
      this.nextUnused += count;
      run = { slot, count };
    }
    if (run === null) return null;
    // One slot at a time, so that a crossing is seen (and reported) at the very slot that
    // made it, exactly as with single allocations.
    for (let i = 0; i < run.count; i++) {
      this.usedSlots++;
      this.checkThreshold();
    }
    return run;
  }

  /**
   * Take one slot. When none is left and automatic growth is adding space, wait for it;
   * ENOSPC when no more space is coming.
   */
  async allocate(): Promise<number> {
    return (await this.allocateRun(1)).slot;
  }

  /**
   * Take between 1 and `max` slots contiguous in one file (as many as there are in a row
   * where the allocator takes from). When none is left and automatic growth is adding
   * space, wait for it; ENOSPC when no more space is coming.
   */
  async allocateRun(max: number): Promise<SlotRun> {
    if (!Number.isSafeInteger(max) || max < 1) throw new Error(`bug: a run of ${max} slots`);
    for (;;) {
      const run = this.tryAllocateRun(max);
      if (run !== null) return run;
      const more = this.manager?.whenMore() ?? null;
      if (more === null) throw BlksnapError.of('ENOSPC', 'difference storage is full');
      const size = this.totalSlots;
      await more;
      // Nothing was added (the step failed): do not ask again and again.
      if (this.totalSlots === size) throw BlksnapError.of('ENOSPC', 'difference storage is full and could not grow');
    }
  }

  release(slot: number): void {
    const lowest = this.freeSlots[this.freeSlots.length - 1];
    if (lowest !== undefined && slot > lowest) this.freeUnsorted = true;
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

  /** The extent holding `slot` (binary search: growth may add many). */
  private extentOf(slot: number): Extent {
    let lo = 0;
    let hi = this.extents.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const e = this.extents[mid];
      if (e === undefined) break;
      if (slot < e.firstSlot) hi = mid - 1;
      else if (slot >= e.firstSlot + e.slotCount) lo = mid + 1;
      else return e;
    }
    throw BlksnapError.of('EIO', `difference storage slot ${slot} does not exist`);
  }

  /** How many slots from `slot` on (at most `max`) lie in a row in one file. */
  contiguousSlots(slot: number, max: number): number {
    const e = this.extentOf(slot);
    return Math.max(1, Math.min(max, e.firstSlot + e.slotCount - slot));
  }

  /** Where byte `offset` of the run from `slot` lies; EIO if [offset, offset + length) leaves the slot's extent. */
  private locate(slot: number, offset: number, length: number): { file: DiffStorageFile; position: number } {
    const e = this.extentOf(slot);
    const start = (slot - e.firstSlot) * this.chunkSize + offset;
    if (offset < 0 || start + length > e.slotCount * this.chunkSize) {
      throw BlksnapError.of('EIO', `bug: ${length} bytes at ${offset} of slot ${slot} leave its file's run of slots`);
    }
    return { file: e.file, position: e.fileOffset + start };
  }

  /** Write a whole chunk (an aligned buffer of chunkSize bytes) into a slot. */
  async writeChunk(slot: number, buf: Buffer): Promise<void> {
    const { file, position } = this.locate(slot, 0, this.chunkSize);
    await file.write(buf, this.chunkSize, position);
  }

  /**
   * Write `count` whole chunks (an aligned buffer) into the slots from `slot` on, one
   * O_DIRECT write; the slots must be contiguous (a run from `allocateRun`).
   */
  async writeSlots(slot: number, count: number, buf: Buffer): Promise<void> {
    const length = count * this.chunkSize;
    const { file, position } = this.locate(slot, 0, length);
    await file.write(buf, length, position);
  }

  /**
   * Write `length` bytes at `offset` within a slot; offset, length and buf are aligned.
   * Only a snapshot's private chunks (image writes) are written in part: a saved copy
   * shared by several snapshots is written once, whole, and never again.
   */
  async writeChunkPart(slot: number, offset: number, length: number, buf: Buffer): Promise<void> {
    const { file, position } = this.locate(slot, offset, length);
    await file.write(buf, length, position);
  }

  /**
   * Read `length` bytes at `offset` from the start of `slot`; offset and length are
   * aligned, and the bytes may run on into the following slots as far as they are
   * contiguous (`contiguousSlots`).
   */
  async readChunkPart(slot: number, offset: number, length: number, buf: Buffer): Promise<void> {
    const { file, position } = this.locate(slot, offset, length);
    await file.read(buf, length, position);
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
