/**
 * One snapshot: a point in time of the origin, with its own frozen change map.
 *
 * Life cycle:
 *
 *     take ──> named (ok | corrupted) ──rmdir──> destroyed, still referenced
 *                                                   │ last open file closed
 *                                                   v
 *                                                released (its saved and private chunks are freed)
 *
 * The name belongs to the engine's table, not to the object: rmdir removes the name
 * at once, while open files keep their reference and keep reading the same data. A new
 * snapshot under the same name is a different object with a new uuid and sequence.
 * `corrupted` is sticky: the first error wins and raises exactly one event.
 */
import type { ErrnoName } from '../errors.js';
import type { FrozenMap } from './change-tracker.js';
import { PrivateChunks } from './private-chunks.js';

export type SnapshotState = 'ok' | 'corrupted';

export class Snapshot {
  readonly seq: number;
  readonly name: string;
  readonly uuid: string;
  readonly created: Date;
  readonly deviceCapacity: number;
  /** Bytes allocated to the origin at the take (its st_blocks; a block device: its size), for the image's st_blocks. */
  readonly originAllocated: number;
  readonly cbt: FrozenMap;
  /** Chunks of its own that writes to its image went to (freed when it is released). */
  readonly privateChunks = new PrivateChunks();
  state: SnapshotState = 'ok';
  error: ErrnoName | null = null;
  errorMessage: string | null = null;
  /** rmdir has run: the name is gone, the data stays until the last reference drops. */
  destroyed = false;
  /** Open files (and other holders) of this snapshot; never below 0. */
  private holders = 0;

  constructor(init: { seq: number; name: string; uuid: string; created: Date; deviceCapacity: number; originAllocated: number; cbt: FrozenMap }) {
    this.seq = init.seq;
    this.name = init.name;
    this.uuid = init.uuid;
    this.created = init.created;
    this.deviceCapacity = init.deviceCapacity;
    this.originAllocated = init.originAllocated;
    this.cbt = init.cbt;
  }

  /** Mark corrupted; true only for the first error (the caller then raises the event). */
  corrupt(code: ErrnoName, message: string): boolean {
    if (this.state === 'corrupted') return false;
    this.state = 'corrupted';
    this.error = code;
    this.errorMessage = message;
    return true;
  }

  get refs(): number {
    return this.holders;
  }

  /** One more holder. */
  hold(): void {
    this.holders++;
  }

  /**
   * One holder fewer. false, and nothing changes, when there is none: a double release
   * must never drive the count negative (a later holder's release would then free the
   * snapshot's space while that holder still reads it).
   */
  drop(): boolean {
    if (this.holders <= 0) return false;
    this.holders--;
    return true;
  }

  get corrupted(): boolean {
    return this.state === 'corrupted';
  }

  /** Nothing can reach it any more: no name and no open file. */
  get released(): boolean {
    return this.destroyed && this.holders === 0;
  }
}

/** Snapshot names: what the contract allows, checked before anything happens. */
export const SNAPSHOT_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
