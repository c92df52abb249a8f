/**
 * Change block tracking with blksnap's meaning.
 *
 * One byte per tracking block. Writes mark the active map with the number of the
 * current period (`activeNumber`). Taking a snapshot ends the period: the snapshot
 * keeps a frozen copy of the map and the period number it ended as its
 * `changes_number`; the active number then goes up by one. So a block written after
 * the snapshot whose changes_number is N has a byte > N in every later snapshot's map
 * of the same generation. When the number would pass 255 the map is cleared, numbering
 * restarts at 1 and a new generation id is made: an incremental backup across that
 * point must be a full one.
 *
 * A tracker either starts a new generation or resumes one saved at a clean unmount
 * (see cbt-continuity.ts for when that is allowed); a resumed tracker carries on with
 * the saved map and period number, so backups stay incremental across remounts.
 */
import { v4 as uuidv4 } from 'uuid';
import { notifyLater } from '../observer.js';

export const MAX_CHANGE_NUMBER = 255;

/** Why a generation started (the `reason` of a cbt-reset event). */
export type ResetReason = 'first' | 'wrap' | 'capacity' | 'unclean' | 'origin-changed' | 'state-invalid';

export interface FrozenMap {
  map: Uint8Array;
  generationId: string;
  changesNumber: number;
}

/** Everything a tracker needs to carry on where another left off. */
export interface TrackerState {
  generationId: string;
  /** When this generation started (it may be many mounts ago). */
  generationStarted: Date;
  /** Why it started. */
  generationReason: ResetReason;
  /** The number the open period writes into the map. */
  activeNumber: number;
  map: Uint8Array;
}

export class ChangeTracker {
  readonly blockSize: number;
  readonly blockCount: number;
  /**
   * The active map. Its memory is its own ArrayBuffer, fixed for the tracker's life
   * (never replaced, never a slice of a pool): the native fast path marks these very
   * bytes (fast-path-state.ts).
   */
  private readonly map: Uint8Array;
  private active = 1;
  private generation: string;
  private started = new Date();
  private reason: ResetReason = 'first';
  /** When the state this generation was resumed from had been saved (null: started in this mount). */
  resumedFrom: Date | null = null;
  /** Where the tracking is kept between mounts (null: not kept), for /status. */
  statePath: string | null = null;
  /** Called with the new generation and why whenever the map is reset (later, outside `freeze`). */
  onReset: ((reset: { generationId: string; reason: ResetReason }) => void) | null = null;

  constructor(blockSize: number, blockCount: number, generationId: string = uuidv4()) {
    this.blockSize = blockSize;
    this.blockCount = blockCount;
    this.map = new Uint8Array(new ArrayBuffer(blockCount));
    this.generation = generationId;
  }

  /** A new generation, started now for `reason`. */
  static fresh(blockSize: number, blockCount: number, reason: ResetReason): ChangeTracker {
    const tracker = new ChangeTracker(blockSize, blockCount);
    tracker.reason = reason;
    return tracker;
  }

  /** Carry on a saved generation (its map must have one byte per block). */
  static resume(blockSize: number, blockCount: number, state: TrackerState): ChangeTracker {
    if (state.map.length !== blockCount) throw new RangeError(`saved map has ${state.map.length} blocks, not ${blockCount}`);
    if (!Number.isInteger(state.activeNumber) || state.activeNumber < 1 || state.activeNumber > MAX_CHANGE_NUMBER) {
      throw new RangeError(`saved change number ${state.activeNumber} is out of range`);
    }
    const tracker = new ChangeTracker(blockSize, blockCount, state.generationId);
    tracker.map.set(state.map);
    tracker.active = state.activeNumber;
    tracker.started = state.generationStarted;
    tracker.reason = state.generationReason;
    return tracker;
  }

  get generationId(): string {
    return this.generation;
  }

  get generationStarted(): Date {
    return this.started;
  }

  get generationReason(): ResetReason {
    return this.reason;
  }

  /** The number the current (open) period writes into the map. */
  get activeNumber(): number {
    return this.active;
  }

  /** The live state, not a copy: save it only while no write can mark the map. */
  get state(): TrackerState {
    return { generationId: this.generation, generationStarted: this.started, generationReason: this.reason, activeNumber: this.active, map: this.map };
  }

  /**
   * Mark the blocks covering [offset, offset + length) as changed in this period. One
   * atomic store per block that is not marked yet, not a fill: the native fast path
   * marks the same bytes from its threads at the same time (with the same value).
   */
  mark(offset: number, length: number): void {
    if (length <= 0) return;
    const first = Math.floor(offset / this.blockSize);
    const last = Math.min(this.blockCount - 1, Math.floor((offset + length - 1) / this.blockSize));
    const map = this.map;
    const active = this.active;
    for (let b = first; b <= last; b++) if (map[b] !== active) Atomics.store(map, b, active);
  }

  /** End the period: return the map as of now, and start the next period. */
  freeze(): FrozenMap {
    const frozen: FrozenMap = { map: this.map.slice(), generationId: this.generation, changesNumber: this.active };
    if (this.active >= MAX_CHANGE_NUMBER) this.reset('wrap');
    else this.active++;
    return frozen;
  }

  /**
   * Start a new generation now, for `reason`: the map cleared, numbering from 1, a new id
   * (the 255 wrap, or a write made outside the mount that the map cannot hold).
   */
  reset(reason: ResetReason): void {
    this.map.fill(0);
    this.active = 1;
    this.generation = uuidv4();
    this.started = new Date();
    this.reason = reason;
    this.resumedFrom = null;
    notifyLater('the change-map reset observer', this.onReset, { generationId: this.generation, reason });
  }

  /** The block range [first, last] covering a byte range (for callers that validate). */
  blocksOf(offset: number, length: number): [number, number] {
    return [Math.floor(offset / this.blockSize), Math.floor((offset + length - 1) / this.blockSize)];
  }
}
