/**
 * The snapshots of one origin: their names, sequence numbers and references, and the
 * events of their lives (blksnap's snapshot and its table, above the per-origin
 * diff area).
 *
 *     take ──> named ──destroy (rmdir)──> unnamed, still held by open files
 *                │                             │ last release
 *                └─destroy, nobody holds it────┴──> released: off `live`; the diff
 *                                                   area frees its copies
 *
 * What it keeps, and who may change it:
 * - `byName`: named snapshots. Changed only by take (inside the write gate's quiesce)
 *   and destroy.
 * - `taking`: names being taken now, so a second mkdir of the same name gets EEXIST
 *   while the first waits at the gate.
 * - `live`: every snapshot not yet released (named, or destroyed but still held), in
 *   sequence order. The copy-on-write asks it which snapshots still need a chunk
 *   (`anyLiveIn`, `newestLiveSeq`), so a snapshot joins it only while no origin write
 *   is inside the gate: no copy in flight misses the new snapshot.
 * - `lastSeq`: sequence numbers only grow; a new snapshot under an old name is a new
 *   object with a new sequence and uuid.
 */
import { v4 as uuidv4 } from 'uuid';
import { BlksnapError, errnoNameOf } from '../errors.js';
import type { FrozenMap } from './change-tracker.js';
import type { EventQueue } from './event-queue.js';
import type { Logger } from './logger.js';
import { Snapshot, SNAPSHOT_NAME } from './snapshot.js';

/** What the registry needs from the engine around it. */
export interface RegistryParts {
  events: EventQueue;
  log: Logger;
  /** The origin's size: every snapshot's capacity. */
  deviceCapacity: number;
  /** Throws ESHUTDOWN unless the engine is open. */
  checkOpen(what: string): void;
  /** Run `fn` with the origin's write gate closed and no origin write inside. */
  quiesce<T>(fn: () => T | Promise<T>): Promise<T>;
  /** Freeze the active change map for a new snapshot (inside the quiesce). */
  freezeCbt(): FrozenMap;
  /** Bytes allocated to the origin now (inside the quiesce: exactly what the snapshot holds). */
  originAllocation(): Promise<number>;
  /** `snap` can no longer be reached: free its space. Returns what was freed, for the log. */
  released(snap: Snapshot): Record<string, number>;
}

/** The snapshots that still need data, as the copy-on-write sees them. */
export interface LiveSnapshots {
  /** The newest snapshot not yet released (0: none). */
  readonly newestLiveSeq: number;
  /** Whether a snapshot not yet released lies in (lo, hi]. */
  anyLiveIn(lo: number, hi: number): boolean;
  /** Every live snapshot in (lo, hi] owns a private copy of `chunk` (and there is at least one). */
  ownedByAllIn(chunk: number, lo: number, hi: number): boolean;
  /** Corrupt every live snapshot in (lo, hi]. */
  corruptRange(lo: number, hi: number, err: unknown, what: string): void;
  /** Mark `snap` corrupted; the first error raises the one event. */
  corruptOne(snap: Snapshot, err: unknown, what: string): void;
}

export class SnapshotRegistry implements LiveSnapshots {
  /** Named snapshots. */
  private readonly byName = new Map<string, Snapshot>();
  /** Names being taken right now (a second mkdir of the same name gets EEXIST). */
  private readonly taking = new Set<string>();
  /** Every snapshot not yet released (named, or destroyed but still open), by seq. */
  private readonly live: Snapshot[] = [];
  private lastSeq = 0;

  constructor(private readonly parts: RegistryParts) {}

  get newestLiveSeq(): number {
    return this.live.length === 0 ? 0 : (this.live[this.live.length - 1]?.seq ?? 0);
  }

  anyLiveIn(lo: number, hi: number): boolean {
    for (const s of this.live) if (s.seq > lo && s.seq <= hi) return true;
    return false;
  }

  ownedByAllIn(chunk: number, lo: number, hi: number): boolean {
    let any = false;
    for (const s of this.live) {
      if (s.seq <= lo || s.seq > hi) continue;
      if (s.privateChunks.slotOf(chunk) < 0) return false;
      any = true;
    }
    return any;
  }

  corruptRange(lo: number, hi: number, err: unknown, what: string): void {
    for (const snap of this.live) if (snap.seq > lo && snap.seq <= hi) this.corruptOne(snap, err, what);
  }

  corruptOne(snap: Snapshot, err: unknown, what: string): void {
    const code = errnoNameOf(err);
    const message = `${what}: ${err instanceof Error ? err.message : String(err)}`;
    if (snap.corrupt(code, message)) {
      this.parts.log.error({ snapshot: snap.name, error: code }, message);
      this.parts.events.emit('corrupted', { snapshot: snap.name, error: code, message });
    }
  }

  /** Take a snapshot: a barrier against origin writes, then a new sequence number. */
  async take(name: string): Promise<Snapshot> {
    const { checkOpen, log, events } = this.parts;
    checkOpen('take a snapshot');
    if (!SNAPSHOT_NAME.test(name)) {
      throw BlksnapError.of('EINVAL', `bad snapshot name "${name}": use 1-64 of A-Z a-z 0-9 . _ -, not starting with . _ or -`);
    }
    if (this.byName.has(name) || this.taking.has(name)) throw BlksnapError.of('EEXIST', `snapshot ${name} already exists`);
    this.taking.add(name);
    try {
      return await this.parts.quiesce(async () => {
        checkOpen('take a snapshot');
        // An estimate for the image's st_blocks: a stat that fails says "all allocated".
        const originAllocated = await this.parts.originAllocation().catch(() => this.parts.deviceCapacity);
        checkOpen('take a snapshot');
        const snap = new Snapshot({
          seq: ++this.lastSeq,
          name,
          uuid: uuidv4(),
          created: new Date(),
          deviceCapacity: this.parts.deviceCapacity,
          originAllocated,
          cbt: this.parts.freezeCbt(),
        });
        this.byName.set(name, snap);
        this.live.push(snap);
        log.info({ snapshot: name, seq: snap.seq }, 'snapshot taken');
        events.emit('snapshot-taken', { snapshot: name });
        return snap;
      });
    } finally {
      this.taking.delete(name);
    }
  }

  /** rmdir: the name goes at once; the data stays until the last reference drops. */
  destroy(name: string): void {
    this.parts.checkOpen('destroy a snapshot');
    const snap = this.byName.get(name);
    if (snap === undefined) throw BlksnapError.of('ENOENT', `no snapshot named ${name}`);
    this.byName.delete(name);
    snap.destroyed = true;
    this.parts.log.info({ snapshot: name, seq: snap.seq, open_refs: snap.refs }, 'snapshot destroyed');
    this.parts.events.emit('snapshot-destroyed', { snapshot: name });
    this.releaseIfUnreachable(snap);
  }

  get(name: string): Snapshot | undefined {
    return this.byName.get(name);
  }

  list(): Snapshot[] {
    return [...this.byName.values()].sort((a, b) => a.seq - b.seq);
  }

  /** The newest snapshot that still has a name. */
  newest(): Snapshot | undefined {
    const all = this.list();
    return all[all.length - 1];
  }

  /**
   * One more holder (an open file) of `snap`. A snapshot already released (destroyed,
   * last holder gone, its copies freed) cannot be held again: ENOENT.
   */
  acquire(snap: Snapshot): void {
    this.parts.checkOpen('open a snapshot');
    if (snap.released) throw BlksnapError.of('ENOENT', `snapshot ${snap.name} (seq ${snap.seq}) was destroyed`);
    snap.hold();
  }

  /** One holder fewer. A release without a matching acquire changes nothing (it is logged as a bug). */
  release(snap: Snapshot): void {
    if (!snap.drop()) {
      this.parts.log.error({ snapshot: snap.name, seq: snap.seq }, 'bug: snapshot released more often than acquired (ignored)');
      return;
    }
    this.releaseIfUnreachable(snap);
  }

  /** Chunks that snapshots not yet released own through image writes. */
  get privateChunks(): number {
    let n = 0;
    for (const snap of this.live) n += snap.privateChunks.count;
    return n;
  }

  private releaseIfUnreachable(snap: Snapshot): void {
    if (!snap.released) return;
    const i = this.live.indexOf(snap);
    if (i < 0) return;
    this.live.splice(i, 1);
    const freed = this.parts.released(snap);
    this.parts.log.info({ snapshot: snap.name, seq: snap.seq, ...freed }, 'snapshot released');
  }
}
