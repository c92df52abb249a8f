/**
 * A seeded randomized model test of the snapshot engine's public API (engine.ts
 * `SnapshotEngine`): many workers at once write and read the origin, take, destroy and
 * reuse snapshot names, hold and release snapshots, read and write their images, mark
 * ranges dirty and freeze the origin, over a real origin file and a real O_DIRECT
 * difference storage whose transfers are split in two with random delays between and
 * fail now and then (slow-io.ts); the storage is small, so it fills (with or without
 * automatic growth); the origin's size is not a multiple of the chunk; the change
 * number wraps past 255.
 *
 * What is checked against the model:
 * - every image read of a snapshot that is not corrupted returns exactly the origin as
 *   it was at the take plus the image's own writes (a byte may also be that of an image
 *   write running during the read: a torn read, never a byte from elsewhere);
 * - the take is a barrier: a write that completed before the take is in the image, one
 *   that started after it returned is not, and each write in between is wholly in or
 *   wholly out, and never in while an earlier write (completed before it started) is out;
 * - every origin write is marked in the map of every snapshot of its generation taken
 *   after it completed (and of those it is in), with a number at least the active one
 *   when it started: an incremental backup from any earlier snapshot copies it;
 * - errors only where they may be: EEXIST and ENOENT as the names say, ENOSPC for an
 *   image write that found no space, EIO only from a corrupted snapshot or while an
 *   injected fault struck; an image write that failed left the image unchanged unless
 *   it corrupted the snapshot;
 * - at the end: the origin equals the model; with every snapshot destroyed and released,
 *   the storage's used slots, the saved and the private chunks are back to zero.
 *
 * Only the engine's public API is used (its parts are being rewritten underneath).
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { v4 as uuidv4 } from 'uuid';
import { SnapshotEngine } from '../../src/engine/engine.js';
import { EventQueue } from '../../src/engine/event-queue.js';
import { ChangeTracker } from '../../src/engine/change-tracker.js';
import { deriveGeometry } from '../../src/engine/geometry.js';
import type { Snapshot } from '../../src/engine/snapshot.js';
import { OriginDevice } from '../../src/storage/origin-device.js';
import { DiffStorage } from '../../src/storage/diff-storage.js';
import { DiffStorageFile } from '../../src/storage/diff-storage-file.js';
import { StorageGrowth } from '../../src/storage/storage-growth.js';
import { errnoNameOf } from '../../src/errors.js';
import { SeededRandom } from './seeded-random.js';
import { SlowIo } from './slow-io.js';
import { RangeLocks, WritesInFlight, firstImpossibleByte, type TrackedWrite } from './range-locks.js';

export interface ModelSpec {
  seed: number;
  /** Operations, all workers together. */
  ops: number;
  workers: number;
  /** The origin's size: not a multiple of the chunk. */
  originSize: number;
  chunkSize: number;
  blockSize: number;
  /** Slots of the difference storage at the start. */
  storageChunks: number;
  /** Automatic growth up to this many slots, or null for none. */
  growToChunks: number | null;
  faultRate: number;
  /** The change number the tracker starts at (near 255 to wrap soon). */
  startActive: number;
  /** A directory on a real file system (O_DIRECT), emptied by the caller. */
  dir: string;
}

export interface ModelReport {
  ops: number;
  ms: number;
  faults: number;
  transfers: number;
  takes: number;
  /** Writes in flight at a take, found wholly in or out of its image. */
  writesAcrossTakes: number;
  /** Image reads checked byte for byte (of snapshots not corrupted). */
  imageReadsChecked: number;
  corruptedSnapshots: number;
  wraps: number;
  errors: Record<string, number>;
}

/** A failed check: carries the seed so the run can be repeated. */
export class ModelFailure extends Error {}

interface SnapModel {
  snap: Snapshot;
  /** The image as it must read, once the take's in-between writes are resolved (null: corrupted before). */
  expected: Buffer | null;
  ready: Promise<void>;
  imageWrites: WritesInFlight;
  imageLocks: RangeLocks;
}

interface OriginWrite extends TrackedWrite {
  genAtStart: string;
  activeAtStart: number;
}

const NAMES = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'];

class Mutex {
  private tail: Promise<void> = Promise.resolve();

  async run<T>(fn: () => Promise<T>): Promise<T> {
    const before = this.tail;
    let release!: () => void;
    this.tail = new Promise<void>((resolve) => (release = resolve));
    await before;
    try {
      return await fn();
    } finally {
      release();
    }
  }
}

class Model {
  engine!: SnapshotEngine;
  io!: SlowIo;
  private clock = 0;
  private opsLeft: number;
  opsDone = 0;
  private readonly rng: SeededRandom;
  /** The origin as every completed write left it. */
  private origin!: Buffer;
  private readonly originWrites = new WritesInFlight<OriginWrite>();
  private readonly originLocks = new RangeLocks();
  private readonly names = new Map<string, SnapModel>();
  private readonly nameLocks = new Map(NAMES.map((n) => [n, new Mutex()]));
  private readonly all: SnapModel[] = [];
  /** Long-held references (as open files are), released at random. */
  private readonly handles: SnapModel[] = [];
  /** Per generation: the least each block's map byte must be, from completed writes. */
  private readonly marks = new Map<string, Uint8Array>();
  private freezeTokens = 0;
  readonly report: ModelReport = { ops: 0, ms: 0, faults: 0, transfers: 0, takes: 0, writesAcrossTakes: 0, imageReadsChecked: 0, corruptedSnapshots: 0, wraps: 0, errors: {} };

  constructor(private readonly spec: ModelSpec) {
    this.rng = new SeededRandom(spec.seed);
    this.opsLeft = spec.ops;
  }

  fail(message: string): never {
    throw new ModelFailure(`engine model, seed ${this.spec.seed}: ${message}`);
  }

  private tick(): number {
    return ++this.clock;
  }

  private countError(what: string, err: unknown): void {
    const key = `${what}:${errnoNameOf(err)}`;
    this.report.errors[key] = (this.report.errors[key] ?? 0) + 1;
  }

  async open(): Promise<void> {
    const { spec } = this;
    const originPath = join(spec.dir, 'origin.img');
    await fsp.writeFile(originPath, this.rng.bytes(spec.originSize));
    this.origin = await fsp.readFile(originPath);
    const origin = await OriginDevice.open(originPath, { readOnly: false });
    const geometry = deriveGeometry(origin.size, spec.chunkSize, spec.blockSize);
    const file = await DiffStorageFile.open(join(spec.dir, 'diff'), spec.storageChunks * spec.chunkSize, { existing: 'empty', checkPlace: async () => undefined });
    const storage = new DiffStorage(geometry.chunkSize, spec.growToChunks === null ? 0 : 2 * spec.chunkSize);
    storage.addFile(file);
    if (spec.growToChunks !== null) storage.manager = new StorageGrowth(storage, spec.growToChunks * spec.chunkSize, 4 * spec.chunkSize);
    const tracker = spec.startActive <= 1
      ? new ChangeTracker(geometry.blockSize, geometry.blockCount)
      : ChangeTracker.resume(geometry.blockSize, geometry.blockCount, {
        generationId: uuidv4(), generationStarted: new Date(), generationReason: 'first', activeNumber: spec.startActive, map: new Uint8Array(geometry.blockCount),
      });
    this.io = new SlowIo(this.rng.fork(), spec.faultRate);
    this.io.wrapOrigin(origin);
    this.io.wrapStorageFile(file);
    const events = new EventQueue(64);
    events.onEvent = (e) => {
      if (e.type === 'cbt-reset') this.report.wraps++;
    };
    this.engine = new SnapshotEngine({ origin, storage, geometry, events, tracker });
  }

  /** A fault struck since `before` (then an EIO proves nothing). */
  private faultSince(before: number): boolean {
    return this.io.faults !== before;
  }

  private randomRange(rng: SeededRandom): { position: number; length: number } {
    const size = this.spec.originSize;
    const cs = this.spec.chunkSize;
    const r = rng.next();
    // Small unaligned, about a chunk, several chunks, or the tail of the origin.
    const length = r < 0.4 ? rng.between(1, 700) : r < 0.75 ? rng.between(cs - 100, cs + 100) : r < 0.95 ? rng.between(1, 3 * cs) : rng.between(1, 2 * cs);
    const position = r >= 0.95 ? Math.max(0, size - length) : rng.int(Math.max(1, size - Math.min(length, size) + 1));
    return { position, length: Math.min(length, size - position) };
  }

  // ---- origin --------------------------------------------------------------------

  private async writeOrigin(rng: SeededRandom): Promise<void> {
    const { position, length } = this.randomRange(rng);
    const data = rng.bytes(length);
    const unlock = await this.originLocks.lock(position, position + length);
    let settle!: () => void;
    const w: OriginWrite = {
      start: position, end: position + length, data, t0: this.tick(), t1: 0, state: 'running',
      done: new Promise<void>((resolve) => (settle = resolve)),
      genAtStart: this.engine.tracker.generationId, activeAtStart: this.engine.tracker.activeNumber,
    };
    this.originWrites.add(w);
    const faults = this.io.faults;
    try {
      await this.engine.writeOrigin(data, 0, length, position);
      data.copy(this.origin, position);
      w.state = 'ok';
      if (this.engine.tracker.generationId === w.genAtStart) this.requireMarks(w);
    } catch (err) {
      w.state = 'failed';
      this.countError('origin write', err);
      if (!(errnoNameOf(err) === 'EIO' && this.faultSince(faults))) this.fail(`origin write ${position}+${length} failed: ${String(err)}`);
    } finally {
      w.t1 = this.tick();
      this.originWrites.remove(w);
      unlock();
      settle();
    }
  }

  /** A completed write: later maps of its generation must mark its blocks at least this high. */
  private requireMarks(w: OriginWrite): void {
    let marks = this.marks.get(w.genAtStart);
    if (marks === undefined) {
      marks = new Uint8Array(this.engine.tracker.blockCount);
      this.marks.set(w.genAtStart, marks);
    }
    const bs = this.spec.blockSize;
    for (let b = Math.floor(w.start / bs); b <= Math.floor((w.end - 1) / bs); b++) marks[b] = Math.max(marks[b] ?? 0, w.activeAtStart);
  }

  private async readOrigin(rng: SeededRandom): Promise<void> {
    const { position, length } = this.randomRange(rng);
    const before = Buffer.from(this.origin.subarray(position, position + length));
    const during = this.originWrites.capture();
    const buf = Buffer.alloc(length);
    const faults = this.io.faults;
    try {
      await this.engine.readOrigin(buf, 0, length, position);
    } catch (err) {
      this.countError('origin read', err);
      if (!(errnoNameOf(err) === 'EIO' && this.faultSince(faults))) this.fail(`origin read ${position}+${length} failed: ${String(err)}`);
      return;
    } finally {
      during.stop();
    }
    const bad = firstImpossibleByte(buf, position, before, this.origin.subarray(position, position + length), during.writes);
    if (bad >= 0) this.fail(`origin read ${position}+${length}: byte ${bad} is ${buf[bad - position]}, neither the model's nor a write's`);
  }

  // ---- snapshots -----------------------------------------------------------------

  private async take(rng: SeededRandom): Promise<void> {
    const name = rng.pick(NAMES);
    await this.nameLocks.get(name)?.run(async () => {
      const live = this.names.has(name);
      const base = Buffer.from(this.origin);
      const marks = new Map([...this.marks].map(([g, m]) => [g, Uint8Array.from(m)]));
      const between = this.originWrites.capture();
      let snap: Snapshot;
      try {
        snap = await this.engine.take(name);
      } catch (err) {
        if (live && errnoNameOf(err) === 'EEXIST') return;
        return this.fail(`take ${name} (live: ${live}) failed: ${String(err)}`);
      } finally {
        between.stop();
      }
      if (live) this.fail(`take ${name} succeeded while the name was live`);
      this.report.takes++;
      const model: SnapModel = { snap, expected: null, ready: Promise.resolve(), imageWrites: new WritesInFlight(), imageLocks: new RangeLocks() };
      let resolveReady!: () => void;
      model.ready = new Promise<void>((resolve) => (resolveReady = resolve));
      this.names.set(name, model);
      this.all.push(model);
      try {
        const required = marks.get(snap.cbt.generationId);
        if (required !== undefined) this.checkMarks(snap, required, `take ${name}: a write completed before it`);
        await this.resolveTake(model, base, between.writes);
      } finally {
        resolveReady();
      }
    });
  }

  private checkMarks(snap: Snapshot, required: Uint8Array, what: string): void {
    for (let b = 0; b < required.length; b++) {
      const need = required[b] ?? 0;
      if ((snap.cbt.map[b] ?? 0) < need) {
        this.fail(`${what}: snapshot ${snap.name} (seq ${snap.seq}, changes_number ${snap.cbt.changesNumber}) maps block ${b} as ${snap.cbt.map[b]}, needs at least ${need}`);
      }
    }
  }

  /**
   * The writes in flight at the take or started during it are each wholly in or out:
   * read the image where they wrote, decide, and check that the decision is consistent
   * and that the image there is exactly the origin at the take with the writes that are in.
   */
  private async resolveTake(model: SnapModel, base: Buffer, between: OriginWrite[]): Promise<void> {
    const { snap } = model;
    await Promise.all(between.map((w) => w.done));
    const writes = between.filter((w) => w.state === 'ok').sort((a, b) => a.t1 - b.t1);
    if (writes.length === 0) {
      model.expected = base;
      return;
    }
    const probe = Buffer.alloc(this.spec.originSize);
    for (const w of writes) {
      if (!(await this.readSnapshotRange(snap, probe, w.start, w.end - w.start))) return; // corrupted: nothing to check
    }
    // Latest first: a write's visible bytes are those no later write that is in covers.
    // An in-write shows its own bytes there; one that is out shows them only by chance.
    const isIn = new Set<OriginWrite>();
    const hidden = new Set<OriginWrite>();
    const covered = new Uint8Array(this.spec.originSize);
    for (let i = writes.length - 1; i >= 0; i--) {
      const w = writes[i] as OriginWrite;
      let seen = 0;
      let shown = 0;
      for (let p = w.start; p < w.end; p++) {
        if (covered[p] === 1) continue;
        seen++;
        if (probe[p] === w.data[p - w.start]) shown++;
      }
      if (seen === 0) hidden.add(w);
      else if (shown * 2 > seen) {
        isIn.add(w);
        covered.fill(1, w.start, w.end);
      }
    }
    // Real-time order: a write that started after another completed is never in without it.
    for (const later of [...isIn]) {
      for (const earlier of writes) {
        if (earlier.t1 >= later.t0 || isIn.has(earlier)) continue;
        if (!hidden.has(earlier)) {
          this.fail(`take ${snap.name}: the image holds the write [${later.start},${later.end}) but not [${earlier.start},${earlier.end}), which completed before it started`);
        }
        isIn.add(earlier); // wholly under later writes that are in: in as well
      }
    }
    this.report.writesAcrossTakes += writes.length;
    const expected = Buffer.from(base);
    for (const w of writes) if (isIn.has(w)) w.data.copy(expected, w.start);
    for (const w of writes) {
      const got = probe.subarray(w.start, w.end);
      if (!got.equals(expected.subarray(w.start, w.end))) {
        let i = 0;
        while (got[i] === expected[w.start + i]) i++;
        this.fail(`take ${snap.name}: a write in flight at the take is partly in the image (byte ${w.start + i} of [${w.start},${w.end}))`);
      }
    }
    for (const w of isIn) {
      if (w.genAtStart !== snap.cbt.generationId) continue;
      const bs = this.spec.blockSize;
      for (let b = Math.floor(w.start / bs); b <= Math.floor((w.end - 1) / bs); b++) {
        if ((snap.cbt.map[b] ?? 0) < w.activeAtStart) this.fail(`take ${snap.name}: a write it holds is not marked in block ${b} (${snap.cbt.map[b]} < ${w.activeAtStart})`);
      }
    }
    model.expected = expected;
  }

  /** Read the image (retrying injected faults); false when the snapshot is corrupted. */
  private async readSnapshotRange(snap: Snapshot, into: Buffer, position: number, length: number): Promise<boolean> {
    for (;;) {
      if (snap.corrupted) return false;
      const faults = this.io.faults;
      try {
        await this.engine.readImage(snap, into, position, length, position);
        return true;
      } catch (err) {
        if (snap.corrupted) return false;
        if (!(errnoNameOf(err) === 'EIO' && this.faultSince(faults))) this.fail(`image read of ${snap.name} failed: ${String(err)}`);
      }
    }
  }

  private async destroy(rng: SeededRandom): Promise<void> {
    const name = rng.pick(NAMES);
    await this.nameLocks.get(name)?.run(async () => {
      const live = this.names.get(name);
      try {
        this.engine.destroy(name);
      } catch (err) {
        if (live === undefined && errnoNameOf(err) === 'ENOENT') return;
        this.fail(`destroy ${name} (live: ${live !== undefined}) failed: ${String(err)}`);
      }
      if (live === undefined) this.fail(`destroy ${name} succeeded with no such snapshot`);
      this.names.delete(name);
    });
  }

  /** Hold a snapshot for the length of `fn`; false when it was released already. */
  private async holding(model: SnapModel, fn: () => Promise<void>): Promise<boolean> {
    try {
      this.engine.acquire(model.snap);
    } catch (err) {
      if (model.snap.released && errnoNameOf(err) === 'ENOENT') return false;
      return this.fail(`acquire of ${model.snap.name} (seq ${model.snap.seq}) failed: ${String(err)}`);
    }
    try {
      await fn();
    } finally {
      this.engine.release(model.snap);
    }
    return true;
  }

  private someSnapshot(rng: SeededRandom): SnapModel | undefined {
    const named = [...this.names.values()];
    if (this.handles.length > 0 && rng.chance(0.3)) return rng.pick(this.handles);
    return named.length > 0 ? rng.pick(named) : undefined;
  }

  private async readImage(rng: SeededRandom): Promise<void> {
    const model = this.someSnapshot(rng);
    if (model === undefined) return;
    await this.holding(model, async () => {
      await model.ready;
      const expected = model.expected;
      if (expected === null || model.snap.corrupted) return;
      const { position, length } = this.randomRange(rng);
      const before = Buffer.from(expected.subarray(position, position + length));
      const during = model.imageWrites.capture();
      const buf = Buffer.alloc(length);
      const faults = this.io.faults;
      try {
        await this.engine.readImage(model.snap, buf, 0, length, position);
      } catch (err) {
        this.countError('image read', err);
        if (model.snap.corrupted) return;
        if (!(errnoNameOf(err) === 'EIO' && this.faultSince(faults))) this.fail(`image read ${model.snap.name} ${position}+${length} failed: ${String(err)}`);
        return;
      } finally {
        during.stop();
      }
      this.report.imageReadsChecked++;
      const bad = firstImpossibleByte(buf, position, before, expected.subarray(position, position + length), during.writes);
      if (bad >= 0) {
        this.fail(`image read of ${model.snap.name} (seq ${model.snap.seq}) ${position}+${length}: byte ${bad} is ${buf[bad - position]}, expected ${expected[bad]} (origin now ${this.origin[bad]})`);
      }
    });
  }

  private async writeImage(rng: SeededRandom): Promise<void> {
    const model = this.someSnapshot(rng);
    if (model === undefined) return;
    await this.holding(model, async () => {
      await model.ready;
      const expected = model.expected;
      if (expected === null || model.snap.corrupted) return;
      const { position, length } = this.randomRange(rng);
      const data = rng.bytes(length);
      const unlock = await model.imageLocks.lock(position, position + length);
      let settle!: () => void;
      const w: TrackedWrite = { start: position, end: position + length, data, t0: this.tick(), t1: 0, state: 'running', done: new Promise((r) => (settle = r)) };
      model.imageWrites.add(w);
      const faults = this.io.faults;
      try {
        await this.engine.writeImage(model.snap, data, 0, length, position);
        data.copy(expected, position);
        w.state = 'ok';
      } catch (err) {
        w.state = 'failed';
        this.countError('image write', err);
        if (model.snap.corrupted) return;
        const code = errnoNameOf(err);
        // Not corrupted: nothing of it was written (checked by later reads of the model).
        if (!(code === 'ENOSPC' || (code === 'EIO' && this.faultSince(faults)))) this.fail(`image write ${model.snap.name} ${position}+${length} failed: ${String(err)}`);
      } finally {
        w.t1 = this.tick();
        model.imageWrites.remove(w);
        unlock();
        settle();
      }
    });
  }

  private handleOp(rng: SeededRandom): void {
    if (this.handles.length > 0 && (this.handles.length > 6 || rng.chance(0.5))) {
      const i = rng.int(this.handles.length);
      const [model] = this.handles.splice(i, 1);
      if (model !== undefined) this.engine.release(model.snap);
      return;
    }
    const named = [...this.names.values()];
    if (named.length === 0) return;
    const model = rng.pick(named);
    this.engine.acquire(model.snap);
    this.handles.push(model);
  }

  private markDirty(rng: SeededRandom): void {
    const { position, length } = this.randomRange(rng);
    this.engine.markDirty(position, Math.max(1, length));
  }

  private async freeze(rng: SeededRandom): Promise<void> {
    const token = `w${++this.freezeTokens}`;
    try {
      await this.engine.freezer.freeze(rng.between(10, 60), token);
    } catch (err) {
      const code = errnoNameOf(err);
      if (code === 'EBUSY' || code === 'ETIMEDOUT') return;
      return this.fail(`freeze failed: ${String(err)}`);
    }
    await new Promise<void>((resolve) => setTimeout(resolve, rng.int(4)));
    try {
      this.engine.freezer.thaw(token);
    } catch (err) {
      if (errnoNameOf(err) !== 'ESTALE') this.fail(`thaw failed: ${String(err)}`);
    }
  }

  // ---- the run -------------------------------------------------------------------

  private async worker(rng: SeededRandom): Promise<void> {
    while (this.opsLeft > 0) {
      this.opsLeft--;
      const r = rng.next();
      if (r < 0.3) await this.writeOrigin(rng);
      else if (r < 0.38) await this.readOrigin(rng);
      else if (r < 0.58) await this.readImage(rng);
      else if (r < 0.7) await this.writeImage(rng);
      else if (r < 0.8) await this.take(rng);
      else if (r < 0.9) await this.destroy(rng);
      else if (r < 0.95) this.handleOp(rng);
      else if (r < 0.99) this.markDirty(rng);
      else await this.freeze(rng);
      this.opsDone++;
    }
  }

  async run(): Promise<void> {
    const started = process.hrtime.bigint();
    const rngs = Array.from({ length: this.spec.workers }, () => this.rng.fork());
    await Promise.all(rngs.map((r) => this.worker(r)));
    this.report.ms = Number(process.hrtime.bigint() - started) / 1e6;
    this.report.ops = this.opsDone;
  }

  /** Every image still readable read whole and exact; then everything goes and the counts are zero. */
  async finish(): Promise<void> {
    this.io.enabled = false;
    const engine = this.engine;
    for (const model of this.all) {
      if (model.snap.released || model.snap.corrupted || model.expected === null) continue;
      const buf = Buffer.alloc(this.spec.originSize);
      await this.engine.readImage(model.snap, buf, 0, buf.length, 0);
      if (!buf.equals(model.expected)) this.fail(`final read of ${model.snap.name} (seq ${model.snap.seq}) differs from the model`);
    }
    const origin = Buffer.alloc(this.spec.originSize);
    await engine.readOrigin(origin, 0, origin.length, 0);
    if (!origin.equals(this.origin)) this.fail('the origin differs from the model');
    for (const model of this.handles.splice(0)) engine.release(model.snap);
    for (const name of [...this.names.keys()]) {
      engine.destroy(name);
      this.names.delete(name);
    }
    this.report.corruptedSnapshots = this.all.filter((m) => m.snap.corrupted).length;
    const unreleased = this.all.filter((m) => !m.snap.released);
    if (unreleased.length > 0) this.fail(`${unreleased.length} snapshots not released at the end`);
    const used = engine.storage.stats().used;
    if (used !== 0 || engine.savedChunks !== 0 || engine.privateChunks !== 0) {
      this.fail(`slots left at the end: storage used ${used} bytes, saved chunks ${engine.savedChunks}, private chunks ${engine.privateChunks}`);
    }
    this.report.faults = this.io.faults;
    this.report.transfers = this.io.transfers;
  }
}

/** Run one seed; throws ModelFailure (naming the seed) at the first wrong answer. */
export async function runEngineModel(spec: ModelSpec): Promise<ModelReport> {
  const model = new Model(spec);
  await model.open();
  try {
    await model.run();
    await model.finish();
  } finally {
    await model.engine.close();
  }
  return model.report;
}
