/**
 * An engine on plain files, no FUSE: the origin is an image file on ext4 and the
 * difference storage a real O_DIRECT file. Closed at teardown.
 */
import type { ExecutionContext } from 'ava';
import { join } from 'node:path';
import { SnapshotEngine } from '../../src/engine/engine.js';
import { EventQueue } from '../../src/engine/event-queue.js';
import { ChangeTracker } from '../../src/engine/change-tracker.js';
import { deriveGeometry } from '../../src/engine/geometry.js';
import { OriginDevice } from '../../src/storage/origin-device.js';
import { DiffStorage } from '../../src/storage/diff-storage.js';
import { DiffStorageFile } from '../../src/storage/diff-storage-file.js';
import type { Logger } from '../../src/engine/logger.js';
import { makeImage, scratchDir } from './fixture.js';

export interface EngineSpec {
  size: number;
  chunkSize: number;
  diffSize: number;
  threshold?: number;
  /** The engine's logger (default: silent). */
  logger?: Logger;
  /** A sparse origin (all hole) instead of random data. */
  sparse?: boolean;
}

export interface EngineUnderTest {
  engine: SnapshotEngine;
  events: EventQueue;
  originPath: string;
  dir: string;
}

export async function openEngine(t: ExecutionContext, spec: EngineSpec): Promise<EngineUnderTest> {
  const dir = await scratchDir(t);
  const originPath = join(dir, 'origin.img');
  await makeImage(originPath, spec.size, { sparse: spec.sparse === true });
  const origin = await OriginDevice.open(originPath, { readOnly: false });
  const geometry = deriveGeometry(origin.size, spec.chunkSize, 64 * 1024);
  const file = await DiffStorageFile.open(join(dir, 'diff'), spec.diffSize, { existing: 'empty', checkPlace: async () => undefined });
  const storage = new DiffStorage(geometry.chunkSize, spec.threshold ?? 0);
  storage.addFile(file);
  const events = new EventQueue();
  const tracker = new ChangeTracker(geometry.blockSize, geometry.blockCount);
  const engine = new SnapshotEngine({ origin, storage, geometry, events, tracker, ...(spec.logger !== undefined ? { logger: spec.logger } : {}) });
  let closed = false;
  t.teardown(async () => {
    if (!closed) await engine.close();
    closed = true;
  });
  return { engine, events, originPath, dir };
}

export async function readImage(engine: SnapshotEngine, name: string, position = 0, length = engine.originSize): Promise<Buffer> {
  const snap = engine.get(name);
  if (snap === undefined) throw new Error(`no snapshot ${name}`);
  const buf = Buffer.alloc(length);
  await engine.readImage(snap, buf, 0, length, position);
  return buf;
}

export async function readOrigin(engine: SnapshotEngine): Promise<Buffer> {
  const buf = Buffer.alloc(engine.originSize);
  await engine.readOrigin(buf, 0, buf.length, 0);
  return buf;
}
