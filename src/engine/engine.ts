/**
 * The snapshot engine: copy-on-write of origin chunks into the difference storage,
 * snapshots and their lifetimes, point-in-time image reads. No FUSE in here; the views
 * call it, and the engine tests drive it on plain files.
 *
 * A write to the origin, as the data flows:
 *   barrier.enter -> for each chunk a live snapshot still needs: save it once
 *   (single-flight per chunk: read origin -> allocate slot -> O_DIRECT write -> record
 *   for all snapshots in (savedThrough, newest]; on failure corrupt those snapshots and
 *   go on) -> wait for image readers still reading those chunks from the origin ->
 *   mark the change map -> write the origin -> barrier.leave.
 * The origin write happens whatever became of the copy: the origin never pays for a
 * snapshot's trouble.
 */
import { v4 as uuidv4 } from 'uuid';
import { BlksnapError, errnoNameOf } from '../errors.js';
import type { OriginDevice } from '../storage/origin-device.js';
import type { DiffStorage } from '../storage/diff-storage.js';
import { AlignedBufferPool, alignDown, alignUp } from '../storage/aligned.js';
import { CopyTable } from './copy-table.js';
import { WriteBarrier } from './write-barrier.js';
import { OriginReaders } from './origin-readers.js';
import { Snapshot, SNAPSHOT_NAME } from './snapshot.js';
import type { EventQueue } from './event-queue.js';
import type { ChangeTracker } from './change-tracker.js';
import type { Geometry } from './geometry.js';
import { silentLogger, type Logger } from './logger.js';
import { SavedWindowCache } from './saved-window-cache.js';
import { SavedReadAhead } from './saved-read-ahead.js';

/** Largest piece of a saved chunk read in one O_DIRECT request. */
const READ_WINDOW = 256 * 1024;
/** Saved chunks read ahead of a sequential image reader (see SavedReadAhead). */
const READ_AHEAD_BYTES = 2 * 1024 * 1024;
/** Memory allowed for chunk copies in flight (bounds concurrent copy-on-write). */
const COPY_POOL_BYTES = 64 * 1024 * 1024;

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

  private readonly copies = new CopyTable();
  private readonly barrier = new WriteBarrier();
  private readonly readers = new OriginReaders();
  private readonly copiesInFlight = new Map<number, Promise<void>>();
  private readonly copyPool: AlignedBufferPool;
  private readonly readPool: AlignedBufferPool;
  private readonly readAhead: SavedReadAhead;
  /** Where each snapshot's next sequential image read would start. */
  private readonly nextImageRead = new WeakMap<Snapshot, number>();
  private readonly windowCache = new SavedWindowCache();

  /** Named snapshots. */
  private readonly byName = new Map<string, Snapshot>();
  /** Names being taken right now (a second mkdir of the same name gets EEXIST). */
  private readonly taking = new Set<string>();
  /** Every snapshot not yet released (named, or destroyed but still open), by seq. */
  private readonly live: Snapshot[] = [];
  private lastSeq = 0;
  /** Set when close() begins: no origin write is accepted after that. */
  private closing = false;

  constructor(parts: EngineParts) {
    this.origin = parts.origin;
    this.storage = parts.storage;
    this.geometry = parts.geometry;
    this.events = parts.events;
    this.tracker = parts.tracker;
    this.log = parts.logger ?? silentLogger;
    const chunk = this.geometry.chunkSize;
    this.copyPool = new AlignedBufferPool(chunk, Math.max(2, Math.min(32, Math.floor(COPY_POOL_BYTES / chunk))));
    const window = Math.min(chunk, READ_WINDOW);
    this.readPool = new AlignedBufferPool(window, 32);
    this.readAhead = new SavedReadAhead(chunk, window, READ_AHEAD_BYTES);
    this.storage.onLowSpace = ({ freeBytes, requestedBytes }) => {
      this.events.emit('low-free-space', { free_bytes: freeBytes, requested_bytes: requestedBytes });
    };
    this.tracker.onReset = (generationId, reason) => {
      this.events.emit('cbt-reset', { generation_id: generationId, reason });
    };
  }

  get originSize(): number {
    return this.geometry.originSize;
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
    this.checkRange(position, length);
    await this.origin.read(buf, offset, length, position);
  }

  async writeOrigin(buf: Buffer, offset: number, length: number, position: number): Promise<void> {
    this.checkRange(position, length);
    if (this.origin.readOnly) throw BlksnapError.of('EROFS', 'the origin is mounted read-only');
    if (length === 0) return;
    if (this.barrier.enter() !== null) await this.barrier.enterWhenOpen();
    try {
      if (this.closing) throw BlksnapError.of('ESHUTDOWN', 'the mount is shutting down');
      const cs = this.geometry.chunkSize;
      const first = Math.floor(position / cs);
      const last = Math.floor((position + length - 1) / cs);
      const newest = this.newestLiveSeq;
      if (newest > 0) {
        let saving: Array<Promise<void>> | null = null;
        for (let c = first; c <= last; c++) {
          if (this.copies.savedThrough(c) < newest) (saving ??= []).push(this.saveChunk(c));
        }
        if (saving !== null) await Promise.all(saving);
      }
      for (let c = first; c <= last; c++) {
        const idle = this.readers.idle(c);
        if (idle !== null) await idle;
      }
      this.tracker.mark(position, length);
      await this.origin.write(buf, offset, length, position);
    } finally {
      this.barrier.leave();
    }
  }

  async flushOrigin(): Promise<void> {
    await this.origin.flush();
  }

  /** Single-flight: concurrent writes to one chunk share one copy. */
  private saveChunk(chunk: number): Promise<void> {
    const inFlight = this.copiesInFlight.get(chunk);
    if (inFlight !== undefined) return inFlight;
    const copying = this.copyChunk(chunk).finally(() => this.copiesInFlight.delete(chunk));
    this.copiesInFlight.set(chunk, copying);
    return copying;
  }

  private async copyChunk(chunk: number): Promise<void> {
    const lo = this.copies.savedThrough(chunk);
    const hi = this.newestLiveSeq;
    const cs = this.geometry.chunkSize;
    const buf = await this.copyPool.acquire();
    let slot = -1;
    try {
      const start = chunk * cs;
      const length = Math.min(cs, this.originSize - start);
      await this.origin.read(buf, 0, length, start);
      if (length < cs) buf.fill(0, length);
      slot = await this.storage.allocate(); // may wait for automatic growth
      this.windowCache.allocated(slot);
      this.readAhead.forgetSlot(slot);
      await this.storage.writeChunk(slot, buf);
      this.copies.add(chunk, lo, hi, slot);
      // A snapshot released while we copied may have left this copy serving nobody.
      if (!this.anyLiveIn(lo, hi)) this.copies.sweep((l, h) => this.anyLiveIn(l, h), (s) => this.storage.release(s));
    } catch (err) {
      if (slot >= 0 && this.copies.lookup(chunk, hi) !== slot) this.storage.release(slot);
      this.corruptRange(lo, hi, err, `cannot save chunk ${chunk}`);
    } finally {
      this.copies.setSavedThrough(chunk, hi);
      this.copyPool.release(buf);
    }
  }

  private anyLiveIn(lo: number, hi: number): boolean {
    for (const s of this.live) if (s.seq > lo && s.seq <= hi) return true;
    return false;
  }

  private corruptRange(lo: number, hi: number, err: unknown, what: string): void {
    const code = errnoNameOf(err);
    const message = `${what}: ${err instanceof Error ? err.message : String(err)}`;
    for (const snap of this.live) {
      if (snap.seq > lo && snap.seq <= hi && snap.corrupt(code, message)) {
        this.log.error({ snapshot: snap.name, error: code }, message);
        this.events.emit('corrupted', { snapshot: snap.name, error: code, message });
      }
    }
  }

  // ---- snapshots ---------------------------------------------------------------

  /** Take a snapshot: a barrier against origin writes, then a new sequence number. */
  async take(name: string): Promise<Snapshot> {
    if (!SNAPSHOT_NAME.test(name)) {
      throw BlksnapError.of('EINVAL', `bad snapshot name "${name}": use 1-64 of A-Z a-z 0-9 . _ -, not starting with . _ or -`);
    }
    if (this.byName.has(name) || this.taking.has(name)) throw BlksnapError.of('EEXIST', `snapshot ${name} already exists`);
    this.taking.add(name);
    try {
      return await this.barrier.quiesce(() => {
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

  acquire(snap: Snapshot): void {
    snap.refs++;
  }

  release(snap: Snapshot): void {
    snap.refs--;
    this.releaseIfUnreachable(snap);
  }

  private releaseIfUnreachable(snap: Snapshot): void {
    if (!snap.released) return;
    const i = this.live.indexOf(snap);
    if (i < 0) return;
    this.live.splice(i, 1);
    const before = this.copies.savedCopies;
    this.copies.sweep((lo, hi) => this.anyLiveIn(lo, hi), (slot) => this.storage.release(slot));
    this.log.info({ snapshot: snap.name, seq: snap.seq, chunks_freed: before - this.copies.savedCopies }, 'snapshot released');
  }

  // ---- images ------------------------------------------------------------------

  /** Read the image of `snap`: each chunk from its saved copy, or from the origin if untouched since. */
  async readImage(snap: Snapshot, buf: Buffer, offset: number, length: number, position: number): Promise<void> {
    this.checkRange(position, length);
    this.checkNotCorrupted(snap);
    const cs = this.geometry.chunkSize;
    const pieces: Array<Promise<void>> = [];
    let done = 0;
    while (done < length) {
      const pos = position + done;
      const chunk = Math.floor(pos / cs);
      const inChunk = pos - chunk * cs;
      const n = Math.min(length - done, cs - inChunk);
      pieces.push(this.readImagePiece(snap, chunk, inChunk, n, buf, offset + done));
      done += n;
    }
    // A sequential reader: start reading the saved chunks just past this request.
    if (this.nextImageRead.get(snap) === position) this.readAheadImage(snap, Math.floor((position + length) / cs));
    this.nextImageRead.set(snap, position + length);
    await Promise.all(pieces);
    // A copy that failed while we read means what we read may be newer than the snapshot.
    this.checkNotCorrupted(snap);
  }

  /** Reads of a corrupted snapshot fail with EIO: its data may be newer than its point in time. */
  private checkNotCorrupted(snap: Snapshot): void {
    if (snap.corrupted) throw BlksnapError.of('EIO', `snapshot ${snap.name} is corrupted (${snap.error ?? 'EIO'})`);
  }

  private async readImagePiece(snap: Snapshot, chunk: number, inChunk: number, length: number, buf: Buffer, offset: number): Promise<void> {
    const slot = this.copies.lookup(chunk, snap.seq);
    if (slot >= 0) {
      await this.readSaved(slot, inChunk, length, buf, offset);
      return;
    }
    if (snap.seq > this.copies.savedThrough(chunk)) {
      // Check and registration in one synchronous span: a writer that saves this chunk
      // after this point waits for us before it overwrites the origin.
      this.readers.enter(chunk);
      try {
        await this.origin.read(buf, offset, length, chunk * this.geometry.chunkSize + inChunk);
      } finally {
        this.readers.leave(chunk);
      }
      return;
    }
    throw BlksnapError.of('EIO', `snapshot ${snap.name} lost chunk ${chunk}`);
  }

  /**
   * Queue reads of the saved windows of the chunks from `from` on (see SavedReadAhead),
   * and hint the kernel about the origin's chunks in the same window.
   */
  private readAheadImage(snap: Snapshot, from: number): void {
    const ra = this.readAhead;
    const chunks = Math.max(1, Math.floor(ra.capacity / ra.windowsPerChunk));
    const to = Math.min(this.geometry.chunkCount - 1, from + chunks - 1);
    let originChunks = 0;
    for (let c = from; c <= to; c++) {
      const slot = this.copies.lookup(c, snap.seq);
      if (slot < 0) {
        originChunks++;
        continue;
      }
      for (let w = 0; w < ra.windowsPerChunk * ra.windowSize; w += ra.windowSize) {
        if (!ra.has(slot, w)) ra.start(slot, w, (b) => this.storage.readChunkPart(slot, w, ra.windowSize, b));
      }
    }
    // The kernel's own read-ahead loses track of a reader that skips the saved chunks.
    if (originChunks > 0) this.origin.willNeed(from * this.geometry.chunkSize, (to - from + 1) * this.geometry.chunkSize);
  }

  /**
   * O_DIRECT reads of the aligned windows around [inChunk, inChunk + length). A read
   * that needs only part of a window keeps the whole window in the cache for its
   * neighbours; whole-window reads go straight through.
   */
  private async readSaved(slot: number, inChunk: number, length: number, buf: Buffer, offset: number): Promise<void> {
    const end = inChunk + length;
    const size = this.readPool.bufferSize;
    for (let window = Math.floor(inChunk / size) * size; window < end; window += size) {
      const from = Math.max(inChunk, window);
      const to = Math.min(end, window + size);
      const partial = to - from < size;
      const early = this.readAhead.has(slot, window) ? await this.readAhead.take(slot, window) : null;
      if (early !== null) {
        early.copy(buf, offset + (from - inChunk), from - window, to - window);
        this.readAhead.done(early);
        continue;
      }
      const cached = partial ? this.windowCache.get(slot, window) : undefined;
      if (cached !== undefined) {
        cached.copy(buf, offset + (from - inChunk), from - window, to - window);
        continue;
      }
      const first = partial ? window : alignDown(from);
      const last = partial ? window + size : alignUp(to);
      const tmp = await this.readPool.acquire();
      try {
        await this.storage.readChunkPart(slot, first, last - first, tmp);
        tmp.copy(buf, offset + (from - inChunk), from - first, to - first);
        if (partial) this.windowCache.set(slot, window, Buffer.from(tmp.subarray(0, size)));
      } finally {
        this.readPool.release(tmp);
      }
    }
  }

  // ---- change tracking -----------------------------------------------------------

  /** blksnap's cbtdirty: mark a byte range changed in the active map and the newest snapshot's map. */
  markDirty(offset: number, length: number): void {
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
    return this.copies.savedCopies;
  }

  /**
   * Shut down in the contract's order: stop new origin writes, drain those in flight,
   * datasync the origin, run `whenSynced` (the daemon saves change tracking there:
   * the map is final and the origin's time stamps are too), release the difference
   * storage (removing the files this mount created), release the origin last.
   * `whenSynced` does not run when the datasync fails: what is on disk is unknown, so
   * nothing may vouch for it. Storage and origin are released whatever happens.
   */
  async close(whenSynced?: () => Promise<void>): Promise<void> {
    this.closing = true;
    await this.barrier.quiesce(async () => {
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
  }
}
