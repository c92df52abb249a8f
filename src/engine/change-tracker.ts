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
 */
import { v4 as uuidv4 } from 'uuid';
import { notifyLater } from '../observer.js';

export const MAX_CHANGE_NUMBER = 255;

export interface FrozenMap {
  map: Uint8Array;
  generationId: string;
  changesNumber: number;
}

export class ChangeTracker {
  readonly blockSize: number;
  readonly blockCount: number;
  private map: Uint8Array;
  private active = 1;
  private generation: string;
  /** Called with the new generation id whenever the map is reset (later, outside `freeze`). */
  onReset: ((generationId: string) => void) | null = null;

  constructor(blockSize: number, blockCount: number, generationId: string = uuidv4()) {
    this.blockSize = blockSize;
    this.blockCount = blockCount;
    this.map = new Uint8Array(blockCount);
    this.generation = generationId;
  }

  get generationId(): string {
    return this.generation;
  }

  /** The number the current (open) period writes into the map. */
  get activeNumber(): number {
    return this.active;
  }

  /** Mark the blocks covering [offset, offset + length) as changed in this period. */
  mark(offset: number, length: number): void {
    if (length <= 0) return;
    const first = Math.floor(offset / this.blockSize);
    const last = Math.min(this.blockCount - 1, Math.floor((offset + length - 1) / this.blockSize));
    this.map.fill(this.active, first, last + 1);
  }

  /** End the period: return the map as of now, and start the next period. */
  freeze(): FrozenMap {
    const frozen: FrozenMap = { map: this.map.slice(), generationId: this.generation, changesNumber: this.active };
    if (this.active >= MAX_CHANGE_NUMBER) {
      this.map.fill(0);
      this.active = 1;
      this.generation = uuidv4();
      notifyLater('the change-map reset observer', this.onReset, this.generation);
    } else {
      this.active++;
    }
    return frozen;
  }

  /** The block range [first, last] covering a byte range (for callers that validate). */
  blocksOf(offset: number, length: number): [number, number] {
    return [Math.floor(offset / this.blockSize), Math.floor((offset + length - 1) / this.blockSize)];
  }
}
