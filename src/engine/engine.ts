/**
 * The snapshot engine: copy-on-write of origin chunks into the difference storage,
 * snapshots and their lifetimes, point-in-time image reads. No FUSE in here; the views
 * call it, and the engine tests drive it on plain files.
 *
 * A write to the origin, as the data flows:
 *   barrier.enter -> for each chunk a live snapshot still needs: save it once
 *   (chunk-copy.ts: single-flight per chunk: read origin -> allocate slot -> O_DIRECT
 *   write -> record for all snapshots in (savedThrough, newest]; on failure corrupt
 *   those snapshots and go on) -> every copy settled -> wait for image readers still
 *   reading those chunks from the origin -> mark the change map -> write the origin ->
 *   barrier.leave.
 * The origin write happens whatever became of the copy: the origin never pays for a
 * snapshot's trouble.
 *
 * Life cycle: open -> closing (new operations fail with ESHUTDOWN; writes and reads in
 * flight finish) -> closed (storage and origin closed). Nothing in the write, take or
 * destroy paths depends on a log call or an event observer: the logger is wrapped
 * best-effort and observers are called guarded (src/observer.ts).
 */
import { v4 as uuidv4 } from 'uuid';
import { BlksnapError, errnoNameOf } from '../errors.js';
import type { OriginDevice } from '../storage/origin-device.js';
import type { DiffStorage } from '../storage/diff-storage.js';
import { AlignedBufferPool } from '../storage/aligned.js';
import { ChunkCopies } from './chunk-copy.js';
import { WriteBarrier } from './write-barrier.js';
import { InFlight } from './in-flight.js';
import { OriginFreeze } from './origin-freeze.js';
import { Snapshot, SNAPSHOT_NAME } from './snapshot.js';
import type { EventQueue } from './event-queue.js';
import type { ChangeTracker } from './change-tracker.js';
import type { Geometry } from './geometry.js';
import { bestEffort, silentLogger, type Logger } from './logger.js';
import { ImageReads } from './image-reads.js';
import { ImageWrites } from './image-writes.js';
import { DiffStorageExceptions, type ExceptionStore } from './exception-store.js';

/** Memory allowed for chunk copies in flight (bounds concurrent copy-on-write). */
const COPY_POOL_BYTES = 64 * 1024 * 1024;

export type EngineStatus = 'open' | 'closing' | 'closed';

export interface EngineParts {
  origin: OriginDevice;
  storage: DiffStorage;
  geometry: Geometry;
  events: EventQueue;
  tracker: ChangeTracker;
  logger?: Logger;
}

export class SnapshotEngine {
  readonly origin: OriginDevice;
  readonly storage: DiffStorage;
  readonly geometry: Geometry;
  readonly events: EventQueue;
  readonly tracker: ChangeTracker;
  private readonly log: Logger;

  private readonly chunks: ChunkCopies;
  private readonly barrier = new WriteBarrier();
  /** Reads (origin, images), image writes and flushes in flight; close waits for them. */
  private readonly reads = new InFlight();
  private state: EngineStatus = 'open';
  private closing: Promise<void> | null = null;
  /** /control freeze and thaw: a caller-held close of the same gate. */
  readonly freezer: OriginFreeze;
  /** Where each image read comes from, and the caches of saved chunks. */
  private readonly imageReads: ImageReads;
  private readonly imageWrites: ImageWrites;
  /** The storage seam the copy-on-write and the image reads and writes use. */
  private readonly store: ExceptionStore;

  /** Named snapshots. */
  private readonly byName = new Map<string, Snapshot>();
  /** Names being taken right now (a second mkdir of the same name gets EEXIST). */
  private readonly taking = new Set<string>();
  /** Every snapshot not yet released (named, or destroyed but still open), by seq. */
  private readonly live: Snapshot[] = [];
  private lastSeq = 0;
  /** Set when close() begins: no origin write is accepted after that. */

  constructor(parts: EngineParts) {
    this.origin = parts.origin;
    this.storage = parts.storage;
    this.geometry = parts.geometry;
    this.events = parts.events;
    this.tracker = parts.tracker;
    this.log = bestEffort(parts.logger ?? silentLogger);
    this.store = new DiffStorageExceptions(this.storage);
    this.freezer = new OriginFreeze(this.barrier, this.events, this.log);
    const chunk = this.geometry.chunkSize;
    this.chunks = new ChunkCopies({
      origin: this.origin,
      store: this.store,
      chunkSize: chunk,
      originSize: this.geometry.originSize,
      pool: new AlignedBufferPool(chunk, Math.max(2, Math.min(32, Math.floor(COPY_POOL_BYTES / chunk)))),
      slotReused: (slot) => this.imageReads.slotReused(slot),
      needed: (lo, hi) => this.anyLiveIn(lo, hi),
      ownedByAll: (chunk, lo, hi) => this.ownedByAllIn(chunk, lo, hi),
      failed: (lo, hi, err, what) => this.corruptRange(lo, hi, err, what),
    });
    this.imageReads = new ImageReads({ origin: this.origin, store: this.store, geometry: this.geometry, sources: this.chunks });
    this.imageWrites = new ImageWrites({
      origin: this.origin,
      store: this.store,
      chunkSize: chunk,
      originSize: this.geometry.originSize,
      sources: this.chunks,
      windows: this.imageReads.windows,
      slotReused: (slot) => this.imageReads.slotReused(slot),
      corrupt: (snap, err, what) => this.corruptOne(snap, err, what),
    });
    // Both are called later, outside the storage's and the tracker's own work.
    this.storage.onLowSpace = ({ freeBytes, requestedBytes }) => {
      this.events.emit('low-free-space', { free_bytes: freeBytes, requested_bytes: requestedBytes });
    };
    this.tracker.onReset = ({ generationId, reason }) => {
      this.events.emit('cbt-reset', { generation_id: generationId, reason });
    };
  }

  get originSize(): number {
    return this.geometry.originSize;
  }

  get status(): EngineStatus {
    return this.state;
  }

  private checkOpen(what: string): void {
    if (this.state !== 'open') throw BlksnapError.of('ESHUTDOWN', `cannot ${what}: the snapshot engine is ${this.state}`);
  }

  private get newestLiveSeq(): number {
    return this.live.length === 0 ? 0 : (this.live[this.live.length - 1]?.seq ?? 0);
  }

  private checkRange(position: number, length: number): void {
    if (position < 0 || length < 0 || position + length > this.originSize) {
      throw BlksnapError.of('EINVAL', `range ${position}+${length} is outside the origin (${this.originSize} bytes)`);
    }
  }

  // ---- origin ------------------------------------------------------------------

  async readOrigin(buf: Buffer, offset: number, length: number, position: number): Promise<void> {
    this.checkOpen('read the origin');
    this.checkRange(position, length);
    this.reads.begin();
    try {
      await this.origin.read(buf, offset, length, position);
    } finally {
      this.reads.end();
    }
  }

  async writeOrigin(buf: Buffer, offset: number, length: number, position: number): Promise<void> {
    this.checkOpen('write the origin');
    this.checkRange(position, length);
    if (this.origin.readOnly) throw BlksnapError.of('EROFS', 'the origin is mounted read-only');
    if (length === 0) return;
    if (this.barrier.enter() !== null) await this.barrier.enterWhenOpen();
    try {
      // A write that waited at the gate while the engine began to close.
      this.checkOpen('write the origin');
      const cs = this.geometry.chunkSize;
      const first = Math.floor(position / cs);
      const last = Math.floor((position + length - 1) / cs);
      // Every copy of this write settles before it leaves the barrier (see chunk-copy.ts).
      const prepared = this.chunks.prepareWrite(first, last, this.newestLiveSeq);
      if (prepared !== null) await prepared;
      this.tracker.mark(position, length);
      await this.origin.write(buf, offset, length, position);
    } finally {
      this.barrier.leave();
    }
  }

  async flushOrigin(): Promise<void> {
    this.checkOpen('flush the origin');
    this.reads.begin();
    try {
      await this.origin.flush();
    } finally {
      this.reads.end();
    }
  }

  private anyLiveIn(lo: number, hi: number): boolean {
    for (const s of this.live) if (s.seq > lo && s.seq <= hi) return true;
    return false;
  }

  /** Every live snapshot in (lo, hi] has its own copy of `chunk` (and there is at least one). */
  private ownedByAllIn(chunk: number, lo: number, hi: number): boolean {
    let any = false;
    for (const s of this.live) {
      if (s.seq <= lo || s.seq > hi) continue;
      if (s.privateChunks.slotOf(chunk) < 0) return false;
      any = true;
    }
    return any;
  }

  private corruptRange(lo: number, hi: number, err: unknown, what: string): void {
    for (const snap of this.live) if (snap.seq > lo && snap.seq <= hi) this.corruptOne(snap, err, what);
  }

  /** Mark `snap` corrupted; the first error raises the one event. */
  private corruptOne(snap: Snapshot, err: unknown, what: string): void {
    const code = errnoNameOf(err);
    const message = `${what}: ${err instanceof Error ? err.message : String(err)}`;
    if (snap.corrupt(code, message)) {
      this.log.error({ snapshot: snap.name, error: code }, message);
      this.events.emit('corrupted', { snapshot: snap.name, error: code, message });
    }
  }

  // ---- snapshots ---------------------------------------------------------------

  /** Take a snapshot: a barrier against origin writes, then a new sequence number. */
  async take(name: string): Promise<Snapshot> {
    this.checkOpen('take a snapshot');
    if (!SNAPSHOT_NAME.test(name)) {
      throw BlksnapError.of('EINVAL', `bad snapshot name "${name}": use 1-64 of A-Z a-z 0-9 . _ -, not starting with . _ or -`);
    }
    if (this.byName.has(name) || this.taking.has(name)) throw BlksnapError.of('EEXIST', `snapshot ${name} already exists`);
    this.taking.add(name);
    try {
      return await this.barrier.quiesce(() => {
        this.checkOpen('take a snapshot');
        const snap = new Snapshot({
          seq: ++this.lastSeq,
          name,
          uuid: uuidv4(),
          created: new Date(),
          deviceCapacity: this.originSize,
          cbt: this.tracker.freeze(),
        });
        this.byName.set(name, snap);
        this.live.push(snap);
        this.log.info({ snapshot: name, seq: snap.seq }, 'snapshot taken');
        this.events.emit('snapshot-taken', { snapshot: name });
        return snap;
      });
    } finally {
      this.taking.delete(name);
    }
  }

  /** rmdir: the name goes at once; the data stays until the last reference drops. */
  destroy(name: string): void {
    this.checkOpen('destroy a snapshot');
    const snap = this.byName.get(name);
    if (snap === undefined) throw BlksnapError.of('ENOENT', `no snapshot named ${name}`);
    this.byName.delete(name);
    snap.destroyed = true;
    this.log.info({ snapshot: name, seq: snap.seq, open_refs: snap.refs }, 'snapshot destroyed');
    this.events.emit('snapshot-destroyed', { snapshot: name });
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
    this.checkOpen('open a snapshot');
    if (snap.released) throw BlksnapError.of('ENOENT', `snapshot ${snap.name} (seq ${snap.seq}) was destroyed`);
    snap.hold();
  }

  /** One holder fewer. A release without a matching acquire changes nothing (it is logged as a bug). */
  release(snap: Snapshot): void {
    if (!snap.drop()) {
      this.log.error({ snapshot: snap.name, seq: snap.seq }, 'bug: snapshot released more often than acquired (ignored)');
      return;
    }
    this.releaseIfUnreachable(snap);
  }

  private releaseIfUnreachable(snap: Snapshot): void {
    if (!snap.released) return;
    const i = this.live.indexOf(snap);
    if (i < 0) return;
    this.live.splice(i, 1);
    const before = this.chunks.savedCopies;
    this.chunks.sweep();
    const privateFreed = snap.privateChunks.releaseAll((slot) => this.store.drop(slot));
    this.log.info({ snapshot: snap.name, seq: snap.seq, chunks_freed: before - this.chunks.savedCopies, private_chunks_freed: privateFreed }, 'snapshot released');
  }

  // ---- images ------------------------------------------------------------------

  /** Read the image of `snap`: each chunk from its saved copy, or from the origin if untouched since. */
  async readImage(snap: Snapshot, buf: Buffer, offset: number, length: number, position: number): Promise<void> {
    this.checkOpen('read a snapshot image');
    this.checkRange(position, length);
    this.checkNotCorrupted(snap);
    this.reads.begin();
    try {
      await this.imageReads.read(snap, buf, offset, length, position);
    } finally {
      this.reads.end();
    }
    // A copy that failed while we read means what we read may be newer than the snapshot.
    this.checkNotCorrupted(snap);
  }

  /**
   * Write into the image of `snap` (image-writes.ts): the bytes go to the snapshot's
   * private copies of the chunks, never to the origin or a copy other snapshots share.
   * No space for a copy: ENOSPC, nothing written, the snapshot still valid. The blocks
   * are marked in the active change map and in the snapshot's own cbtmap first (a mark
   * is never missing for bytes that landed; one for a write that failed only costs an
   * incremental backup those blocks). The write holds the snapshot while it runs, so
   * its private chunks cannot be freed under it.
   */
  async writeImage(snap: Snapshot, buf: Buffer, offset: number, length: number, position: number): Promise<void> {
    this.checkOpen('write a snapshot image');
    this.checkRange(position, length);
    if (this.origin.readOnly) throw BlksnapError.of('EROFS', 'the mount is read-only: so are its snapshot images');
    this.checkNotCorrupted(snap);
    if (length === 0) return;
    this.acquire(snap);
    this.reads.begin();
    try {
      this.markImageWrite(snap, position, length);
      await this.imageWrites.write(snap, buf, offset, length, position);
    } finally {
      this.reads.end();
      this.release(snap);
    }
    // A copy that failed meanwhile: the snapshot, written or not, is no longer its point in time.
    this.checkNotCorrupted(snap);
  }

  /** blksnap marks image writes in both maps (cbt_map_set_both): the active one and the snapshot's own. */
  private markImageWrite(snap: Snapshot, position: number, length: number): void {
    this.tracker.mark(position, length);
    const [first, last] = this.tracker.blocksOf(position, length);
    snap.cbt.map.fill(snap.cbt.changesNumber, first, Math.min(last, snap.cbt.map.length - 1) + 1);
  }

  /** Reads of a corrupted snapshot fail with EIO: its data may be newer than its point in time. */
  private checkNotCorrupted(snap: Snapshot): void {
    if (snap.corrupted) throw BlksnapError.of('EIO', `snapshot ${snap.name} is corrupted (${snap.error ?? 'EIO'})`);
  }

  // ---- change tracking -----------------------------------------------------------

  /** blksnap's cbtdirty: mark a byte range changed in the active map and the newest snapshot's map. */
  markDirty(offset: number, length: number): void {
    this.checkOpen('mark a range dirty');
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset + length > this.originSize) {
      throw BlksnapError.of('EINVAL', `cbt-dirty range ${offset}+${length} is outside the origin (${this.originSize} bytes)`);
    }
    this.tracker.mark(offset, length);
    const newest = this.newest();
    if (newest !== undefined) {
      const [first, last] = this.tracker.blocksOf(offset, length);
      newest.cbt.map.fill(newest.cbt.changesNumber, first, last + 1);
    }
  }

  // ---- state -------------------------------------------------------------------

  get savedChunks(): number {
    return this.chunks.savedCopies;
  }

  /** Chunks that snapshots not yet released own through image writes. */
  get privateChunks(): number {
    let n = 0;
    for (const snap of this.live) n += snap.privateChunks.count;
    return n;
  }

  /**
   * open -> closing -> closed, in the contract's order: refuse new operations
   * (ESHUTDOWN), drain the writes (and so their copies) and reads in flight, datasync
   * the origin, run `whenSynced` (the daemon saves change tracking there: the map is
   * final and the origin's time stamps are too), release the difference storage
   * (removing the files this mount created), release the origin last. `whenSynced`
   * does not run when the datasync fails: what is on disk is unknown, so nothing may
   * vouch for it. Storage and origin are released whatever happens. Every caller waits
   * on the same close.
   */
  close(whenSynced?: () => Promise<void>): Promise<void> {
    this.closing ??= this.shutDown(whenSynced);
    return this.closing;
  }

  private async shutDown(whenSynced?: () => Promise<void>): Promise<void> {
    this.state = 'closing';
    // Writes held by a freeze are in flight too: let them finish instead of waiting out the deadline.
    this.freezer.dispose();
    try {
      await this.barrier.quiesce(async () => {
        await this.reads.drained();
        try {
          if (!this.origin.readOnly) await this.origin.flush();
          await whenSynced?.();
        } finally {
          try {
            await this.storage.close();
          } finally {
            await this.origin.close();
          }
        }
      });
    } finally {
      this.state = 'closed';
    }
  }
}
