/**
 * The snapshot engine of one origin: the facade the views, the daemon and the tests
 * use. No FUSE in here; the engine tests drive it on plain files.
 *
 * It puts three parts together and owns what spans them:
 * - the diff area (diff-area.ts): the origin's write gate and freeze, copy-on-write of
 *   its chunks, image reads and image writes, over an exception store
 *   (exception-store.ts) on the difference storage;
 * - the snapshot registry (snapshot-registry.ts): names, sequence numbers, references,
 *   take/destroy/release and their events;
 * - here: range and mode checks, change-tracking marks of image writes and cbt-dirty,
 *   and the engine's life cycle.
 *
 * Life cycle: open -> closing (new operations fail with ESHUTDOWN; writes and reads in
 * flight finish) -> closed (storage and origin closed). Nothing in the write, take or
 * destroy paths depends on a log call or an event observer: the logger is wrapped
 * best-effort and observers are called guarded (src/observer.ts).
 */
import { BlksnapError } from '../errors.js';
import type { OriginDevice, ZeroKind } from '../storage/origin-device.js';
import type { SeekWhat } from '../storage/native.js';
import type { DiffStorage } from '../storage/diff-storage.js';
import { DiffArea } from './diff-area.js';
import { DiffStorageExceptions } from './exception-store.js';
import { InFlight } from './in-flight.js';
import type { OriginFreeze } from './origin-freeze.js';
import { SnapshotRegistry } from './snapshot-registry.js';
import type { Snapshot } from './snapshot.js';
import type { EventQueue } from './event-queue.js';
import type { FastPathState } from './fast-path-state.js';
import type { ChangeTracker } from './change-tracker.js';
import type { Geometry } from './geometry.js';
import { bestEffort, silentLogger, type Logger } from './logger.js';
import { OriginWriteCounter, type OriginWriteAccounting } from './origin-write-accounting.js';

export type EngineStatus = 'open' | 'closing' | 'closed';

/** The zeros an image fallocate writes (never written to: writes only read their buffer). */
const ZEROS = Buffer.alloc(1024 * 1024);

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

  private readonly area: DiffArea;
  private readonly snapshots: SnapshotRegistry;
  /** Reads (origin, images), image writes and flushes in flight; close waits for them. */
  private readonly reads = new InFlight();
  /** Set to closing when close() begins: no operation is accepted after that. */
  private state: EngineStatus = 'open';
  /** The origin writes of `writeOrigin` (origin-write-accounting.ts). */
  private readonly jsOriginWrites = new OriginWriteCounter();
  /**
   * Runs before each take, before the write gate closes (the daemon looks for writes made
   * outside the mount there, so a map frozen for a snapshot does not silently miss one).
   * A failure fails the take.
   */
  beforeTake: (() => Promise<void>) | null = null;
  private closing: Promise<void> | null = null;

  constructor(parts: EngineParts) {
    this.origin = parts.origin;
    this.storage = parts.storage;
    this.geometry = parts.geometry;
    this.events = parts.events;
    this.tracker = parts.tracker;
    this.log = bestEffort(parts.logger ?? silentLogger);
    const checkOpen = (what: string): void => this.checkOpen(what);
    // The registry and the diff area call each other only once operations run.
    this.snapshots = new SnapshotRegistry({
      events: this.events,
      log: this.log,
      deviceCapacity: this.geometry.originSize,
      checkOpen,
      quiesce: (fn) => this.area.quiesce(fn),
      freezeCbt: () => {
        const frozen = this.tracker.freeze();
        this.area.snapshotTaken();
        return frozen;
      },
      originAllocation: () => this.origin.refreshAllocation(),
      released: (snap) => this.area.freeSnapshot(snap),
    });
    this.area = new DiffArea({
      origin: this.origin,
      store: new DiffStorageExceptions(this.storage),
      geometry: this.geometry,
      tracker: this.tracker,
      events: this.events,
      log: this.log,
      snapshots: this.snapshots,
      checkOpen,
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

  /** /control freeze and thaw: a caller-held close of the origin's write gate. */
  get freezer(): OriginFreeze {
    return this.area.freezer;
  }

  private checkOpen(what: string): void {
    if (this.state !== 'open') throw BlksnapError.of('ESHUTDOWN', `cannot ${what}: the snapshot engine is ${this.state}`);
  }

  private checkRange(position: number, length: number): void {
    if (position < 0 || length < 0 || position + length > this.originSize) {
      throw BlksnapError.of('EINVAL', `range ${position}+${length} is outside the origin (${this.originSize} bytes)`);
    }
  }

  /** Reads of a corrupted snapshot fail with EIO: its data may be newer than its point in time. */
  private checkNotCorrupted(snap: Snapshot): void {
    if (snap.corrupted) throw BlksnapError.of('EIO', `snapshot ${snap.name} is corrupted (${snap.error ?? 'EIO'})`);
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

  /** Write the origin, saving first what live snapshots still need (diff-area.ts). */
  async writeOrigin(buf: Buffer, offset: number, length: number, position: number): Promise<void> {
    this.checkOpen('write the origin');
    this.checkRange(position, length);
    if (this.origin.readOnly) throw BlksnapError.of('EROFS', 'the origin is mounted read-only');
    if (length === 0) return;
    this.jsOriginWrites.begin(position, length);
    try {
      await this.area.writeOrigin(buf, offset, length, position);
    } finally {
      this.jsOriginWrites.end();
    }
  }

  /**
   * The writes `writeOrigin` and `fallocateOrigin` made (begun before they wait at the
   * gate, ended once they returned). Any other writer of the origin in this process keeps a tally of its own;
   * the daemon sums them (origin-write-accounting.ts).
   */
  get originWrites(): OriginWriteAccounting {
    return this.jsOriginWrites;
  }

  /**
   * fallocate on the origin: make [position, position + length) read as zeros, by
   * punching it (`punch`: an image file gets a hole, a block device discards) or zeroing
   * it (`zero`). For snapshots and change tracking it is a write of zeros (diff-area.ts).
   * A block device's range must be aligned to its sector (EINVAL, nothing done).
   */
  async fallocateOrigin(kind: ZeroKind, position: number, length: number): Promise<void> {
    this.checkOpen('punch or zero the origin');
    this.checkRange(position, length);
    if (this.origin.readOnly) throw BlksnapError.of('EROFS', 'the origin is mounted read-only');
    const align = this.origin.zeroAlignment;
    if (position % align !== 0 || length % align !== 0) {
      throw BlksnapError.of('EINVAL', `fallocate of a block device must be aligned to its ${align}-byte sectors (got ${position}+${length})`);
    }
    if (length === 0) return;
    // Ours, for the watch on outside writes: a punch moves the time stamps (and a block
    // device's discard or write counters) like a write (origin-write-accounting.ts).
    this.jsOriginWrites.begin(position, length, 'discard');
    try {
      await this.area.fallocateOrigin(kind, position, length);
    } finally {
      this.jsOriginWrites.end();
    }
    // st_blocks of /origin follows (a punch gives space back).
    await this.origin.refreshAllocation().catch(() => undefined);
  }

  /**
   * SEEK_DATA (`data`) / SEEK_HOLE (`hole`) on the origin: its own holes. null: no data
   * at or after `offset` (ENXIO for the caller). The caller checked `offset` < size.
   */
  async seekOrigin(offset: number, what: SeekWhat): Promise<number | null> {
    this.checkOpen('seek in the origin');
    this.reads.begin();
    try {
      return what === 'data' ? await this.origin.seekData(offset) : await this.origin.seekHole(offset);
    } finally {
      this.reads.end();
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

  // ---- snapshots (snapshot-registry.ts) -------------------------------------------

  /** Take a snapshot: a barrier against origin writes, then a new sequence number. */
  async take(name: string): Promise<Snapshot> {
    if (this.beforeTake !== null) {
      this.checkOpen('take a snapshot');
      await this.beforeTake();
    }
    return this.snapshots.take(name);
  }

  /** rmdir: the name goes at once; the data stays until the last reference drops. */
  destroy(name: string): void {
    this.snapshots.destroy(name);
  }

  get(name: string): Snapshot | undefined {
    return this.snapshots.get(name);
  }

  list(): Snapshot[] {
    return this.snapshots.list();
  }

  /** The newest snapshot that still has a name. */
  newest(): Snapshot | undefined {
    return this.snapshots.newest();
  }

  /** One more holder (an open file) of `snap`; ENOENT once it was released. */
  acquire(snap: Snapshot): void {
    this.snapshots.acquire(snap);
  }

  /** One holder fewer. A release without a matching acquire changes nothing (it is logged as a bug). */
  release(snap: Snapshot): void {
    this.snapshots.release(snap);
  }

  // ---- images (diff-area.ts) ---------------------------------------------------

  /** Read the image of `snap`: each chunk from its own copy, its saved copy, or the origin if untouched since. */
  async readImage(snap: Snapshot, buf: Buffer, offset: number, length: number, position: number): Promise<void> {
    this.checkOpen('read a snapshot image');
    this.checkRange(position, length);
    this.checkNotCorrupted(snap);
    this.reads.begin();
    try {
      await this.area.readImage(snap, buf, offset, length, position);
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
      await this.area.writeImage(snap, buf, offset, length, position);
    } finally {
      this.reads.end();
      this.release(snap);
    }
    // A copy that failed meanwhile: the snapshot, written or not, is no longer its point in time.
    this.checkNotCorrupted(snap);
  }

  /**
   * SEEK_DATA / SEEK_HOLE on the image of `snap` (image-holes.ts): holes where the image
   * reads zeros because the origin had a hole there at the take. Exact for the
   * snapshot. null: no data at or after `offset`. The caller checked `offset` < size.
   */
  async seekImage(snap: Snapshot, offset: number, what: SeekWhat): Promise<number | null> {
    this.checkOpen('seek in a snapshot image');
    this.checkNotCorrupted(snap);
    this.reads.begin();
    let found: number | null;
    try {
      found = await this.area.seekImage(snap, offset, what);
    } finally {
      this.reads.end();
    }
    // A copy that failed meanwhile may have made the answer wrong.
    this.checkNotCorrupted(snap);
    return found;
  }

  /**
   * fallocate (punch or zero) on the image of `snap`: a write of zeros to its private
   * copies, like any image write (space taken, ENOSPC without space, both maps marked),
   * in pieces of at most 1 MiB.
   */
  async zeroImage(snap: Snapshot, position: number, length: number): Promise<void> {
    this.checkRange(position, length);
    for (let done = 0; done < length;) {
      const n = Math.min(ZEROS.length, length - done);
      await this.writeImage(snap, ZEROS, 0, n, position + done);
      done += n;
    }
  }

  /**
   * What `st_blocks` of the image of `snap` says, in bytes: the origin's allocation at
   * the take plus the chunks written through the image, at most its size. An estimate
   * (saved copies are already in the first figure; copies saved as holes add nothing).
   */
  imageAllocatedBytes(snap: Snapshot): number {
    return Math.min(snap.deviceCapacity, snap.originAllocated + snap.privateChunks.count * this.geometry.chunkSize);
  }

  // ---- change tracking -----------------------------------------------------------

  /** blksnap marks image writes in both maps (cbt_map_set_both): the active one and the snapshot's own. */
  private markImageWrite(snap: Snapshot, position: number, length: number): void {
    this.tracker.mark(position, length);
    const [first, last] = this.tracker.blocksOf(position, length);
    snap.cbt.map.fill(snap.cbt.changesNumber, first, Math.min(last, snap.cbt.map.length - 1) + 1);
  }

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

  /**
   * The origin was written outside the mount (the daemon's watch saw it): the active map
   * misses those blocks and the snapshots' images that still read the origin may hold
   * them. Every snapshot not yet released is marked corrupted (EIO, one `corrupted` event
   * each): none of them can be proven its point in time any more. Then change tracking
   * starts a new generation (a `cbt-reset` event, reason `origin-changed`), with the write
   * gate closed and drained, as at a take: the native fast path marks the same map, and
   * learns the new period's number there (diff-area.ts `snapshotTaken`).
   */
  async originWrittenOutside(detail: string): Promise<void> {
    this.snapshots.corruptRange(0, Number.MAX_SAFE_INTEGER, BlksnapError.of('EIO', detail), 'the origin was written outside the mount');
    if (this.state !== 'open') return;
    await this.area.quiesce(() => {
      this.tracker.reset('origin-changed');
      this.area.snapshotTaken();
    });
  }

  // ---- the native fast path -------------------------------------------------------

  /**
   * The state a transport's native fast path serves from (fast-path-state.ts): origin
   * reads, and writes to chunks no live snapshot needs copied, served without this
   * engine; every other request still comes here. The caller hands the transport's
   * handle back with `serveBy`, so that close stops it before the origin is released.
   */
  shareWithNative(): FastPathState {
    this.checkOpen('serve the origin natively');
    return this.area.shareWithNative();
  }

  // ---- state -------------------------------------------------------------------

  get savedChunks(): number {
    return this.area.savedChunks;
  }

  /** Chunks saved as holes (no difference storage used). */
  get savedHoles(): number {
    return this.area.savedHoles;
  }

  /** Chunks that snapshots not yet released own through image writes. */
  get privateChunks(): number {
    return this.snapshots.privateChunks;
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
    this.area.freezer.dispose();
    try {
      await this.area.quiesce(async () => {
        await this.reads.drained();
        try {
          await this.area.stopNative();
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
