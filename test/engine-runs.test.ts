/**
 * Copy runs on the engine (no FUSE): adjacent chunks a write must save are copied with
 * one origin read and one O_DIRECT write into slots in a row; runs stop at chunks that
 * need no copy (saved, in flight, owned privately); concurrent writes join runs; a run
 * settles all its chunks at once; a run whose write fails corrupts exactly the
 * snapshots that needed it. Requests are counted by wrapping the origin's reads and the
 * storage's run writes; faults are injected the same way.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { KiB, MiB } from './helpers/fixture.js';
import { openEngine, readImage, readOrigin } from './helpers/engine-fixture.js';
import { BlksnapError } from '../src/errors.js';
import type { SnapshotEngine } from '../src/engine/engine.js';
import type { Snapshot } from '../src/engine/snapshot.js';
import { ChunkCopies } from '../src/engine/chunk-copy.js';
import { DiffStorageExceptions } from '../src/engine/exception-store.js';
import { AlignedBufferPool, allocAligned } from '../src/storage/aligned.js';
import { DiffStorage } from '../src/storage/diff-storage.js';
import { DiffStorageFile } from '../src/storage/diff-storage-file.js';

const CHUNK = 64 * KiB;

function snapshot(engine: SnapshotEngine, name: string): Snapshot {
  const snap = engine.get(name);
  if (snap === undefined) throw new Error(`no snapshot ${name}`);
  return snap;
}

async function write(engine: SnapshotEngine, position: number, data: Buffer): Promise<void> {
  await engine.writeOrigin(data, 0, data.length, position);
}

/** A promise and the function that resolves it. */
function gate(): { open: () => void; opened: Promise<void> } {
  let open!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  return { open, opened };
}

/**
 * Count the origin reads ([position, length] in chunks: only copies read the origin while
 * nothing reads an image) and the run writes ([slot, count]) of an engine.
 */
function countRequests(engine: SnapshotEngine, hold?: Promise<void>): { reads: Array<[number, number]>; writes: Array<[number, number]> } {
  const reads: Array<[number, number]> = [];
  const writes: Array<[number, number]> = [];
  const origin = engine.origin;
  const plainRead = origin.read.bind(origin);
  origin.read = async (buf, offset, length, position) => {
    reads.push([position / CHUNK, length / CHUNK]);
    if (hold !== undefined) await hold;
    return plainRead(buf, offset, length, position);
  };
  const storage = engine.storage;
  const plainWrite = storage.writeSlots.bind(storage);
  storage.writeSlots = (slot, count, buf) => {
    writes.push([slot, count]);
    return plainWrite(slot, count, buf);
  };
  return { reads, writes };
}

const byStart = (a: [number, number], b: [number, number]): number => a[0] - b[0];

test('a 1 MiB first write is one run: one origin read, one O_DIRECT write into slots in a row', async (t) => {
  const { engine } = await openEngine(t, { size: 4 * MiB, chunkSize: CHUNK, diffSize: 4 * MiB });
  const v0 = await readOrigin(engine);
  await engine.take('a');
  const { reads, writes } = countRequests(engine);
  const data = randomBytes(MiB);
  await write(engine, MiB, data);
  t.deepEqual(reads, [[16, 16]], 'one read of chunks 16..31');
  t.deepEqual(writes, [[0, 16]], 'one write into slots 0..15');
  t.is(engine.savedChunks, 16);
  t.is(engine.storage.stats().used, 16 * CHUNK);
  t.true((await readImage(engine, 'a')).equals(v0));
  t.true((await readOrigin(engine)).subarray(MiB, 2 * MiB).equals(data));
  // A write of 2.5 MiB from the middle of a chunk: runs of at most 16 chunks.
  reads.length = 0;
  await write(engine, 2 * MiB + 4 * KiB, randomBytes(2 * MiB - 8 * KiB));
  t.deepEqual(reads.sort(byStart), [[32, 16], [48, 16]], 'chunks 32..63 in runs of 16');
  t.true((await readImage(engine, 'a')).equals(v0));
});

test('runs stop at chunks that need no copy (saved, in flight, owned privately); each stretch between them is one run', async (t) => {
  const { engine } = await openEngine(t, { size: 4 * MiB, chunkSize: CHUNK, diffSize: 8 * MiB });
  const v1 = await readOrigin(engine);
  await engine.take('s1');
  await write(engine, 2 * CHUNK, randomBytes(2 * CHUNK)); // chunks 2, 3 saved for s1
  const v2 = await readOrigin(engine);
  await engine.take('s2');
  await write(engine, 3 * CHUNK, randomBytes(CHUNK)); // chunk 3 saved for s2 too; chunk 2 only for s1
  // Chunk 8 written through both images: both own it, so the origin write needs no copy of it.
  const own1 = randomBytes(100);
  const own2 = randomBytes(100);
  await engine.writeImage(snapshot(engine, 's1'), own1, 0, own1.length, 8 * CHUNK + 10);
  await engine.writeImage(snapshot(engine, 's2'), own2, 0, own2.length, 8 * CHUNK + 10);
  const v3 = await readOrigin(engine);
  const hold = gate();
  const { reads, writes } = countRequests(engine, hold.opened);
  // Chunk 5 is being copied for another write when the 1 MiB write comes.
  const w5 = write(engine, 5 * CHUNK + 4 * KiB, randomBytes(4 * KiB));
  const data = randomBytes(MiB);
  const w = write(engine, 0, data);
  hold.open();
  await Promise.all([w5, w]);
  t.deepEqual(reads.sort(byStart), [[0, 3], [4, 1], [5, 1], [6, 2], [9, 7]],
    'chunks 0..2 (2 saved for s1 only: its copy serves s2), 4, 6..7, 9..15 for the write; 5 for the other write, joined');
  t.is(writes.length, 5, 'one storage write per run');
  t.is(writes.reduce((n, [, count]) => n + count, 0), 14, '14 chunks copied: 16, less chunk 3 (saved) and chunk 8 (owned)');
  const e1 = Buffer.from(v1);
  own1.copy(e1, 8 * CHUNK + 10);
  const e2 = Buffer.from(v2);
  own2.copy(e2, 8 * CHUNK + 10);
  t.true((await readImage(engine, 's1')).equals(e1), 's1 is its point in time plus its own write');
  t.true((await readImage(engine, 's2')).equals(e2), 's2 is its point in time plus its own write');
  const now = await readOrigin(engine);
  t.true(now.subarray(0, MiB).equals(data), 'the 1 MiB write landed after the 4 KiB one');
  t.true(now.subarray(MiB).equals(v3.subarray(MiB)));
  t.is(snapshot(engine, 's1').state, 'ok');
  t.is(snapshot(engine, 's2').state, 'ok');
  t.is(engine.storage.stats().used, (engine.savedChunks + engine.privateChunks) * CHUNK, 'every slot used is a saved or a private chunk');
});

test('concurrent overlapping writes join the runs in flight: every chunk is copied once, and none is overwritten first', async (t) => {
  const { engine } = await openEngine(t, { size: 4 * MiB, chunkSize: CHUNK, diffSize: 8 * MiB });
  const v0 = await readOrigin(engine);
  await engine.take('a');
  const hold = gate();
  const { reads } = countRequests(engine, hold.opened);
  // All three arrive while the first run's origin read is held: a write that did not
  // wait for the run it joined would overwrite the origin before the run reads it.
  const writes = [
    write(engine, 0, randomBytes(MiB)), // chunks 0..15: a run
    write(engine, 8 * CHUNK, randomBytes(MiB)), // 8..15 joined, 16..23 a run
    write(engine, 4 * CHUNK + 100, randomBytes(10)), // joined
    write(engine, 20 * CHUNK, randomBytes(8 * CHUNK)), // 20..23 joined, 24..27 a run
  ];
  // Runs start in the write call itself (the gate is open, nothing to wait for before).
  t.deepEqual(reads.sort(byStart), [[0, 16], [16, 8], [24, 4]], 'three runs, no chunk twice');
  hold.open();
  await Promise.all(writes);
  t.is(engine.savedChunks, 28);
  t.true((await readImage(engine, 'a')).equals(v0));
});

test('a run whose O_DIRECT write fails halfway corrupts exactly the snapshots that needed it; the origin write lands', async (t) => {
  const { engine, events } = await openEngine(t, { size: 4 * MiB, chunkSize: CHUNK, diffSize: 8 * MiB });
  const v0 = await readOrigin(engine);
  const s1 = await engine.take('s1');
  await write(engine, 0, randomBytes(MiB)); // chunks 0..15 saved for s1
  const s2 = await engine.take('s2');
  // The next run's write gets half of its chunks onto the storage, then fails.
  const storage = engine.storage;
  const plainWrite = storage.writeSlots.bind(storage);
  let armed = true;
  storage.writeSlots = async (slot, count, buf) => {
    if (!armed) return plainWrite(slot, count, buf);
    armed = false;
    await plainWrite(slot, count / 2, buf);
    throw BlksnapError.of('EIO', 'injected: the storage failed halfway through the run');
  };
  const data = randomBytes(MiB);
  await write(engine, 0, data); // the run for (1, 2]: s2 only
  t.false(armed, 'the fault fired');
  t.is(s2.state, 'corrupted', 's2 needed the run');
  t.is(s2.error, 'EIO');
  t.is(s1.state, 'ok', 's1 did not');
  t.true((await readOrigin(engine)).subarray(0, MiB).equals(data), 'the origin write landed');
  await t.throwsAsync(() => readImage(engine, 's2'), { code: 'EIO' });
  await write(engine, MiB, randomBytes(MiB)); // a run for (0, 2]: written
  const v2 = await readOrigin(engine);
  await engine.take('s3');
  await write(engine, 0, randomBytes(2 * MiB)); // a run for (2, 3]
  t.true((await readImage(engine, 's1')).equals(v0), 's1 is exact');
  t.true((await readImage(engine, 's3')).equals(v2), 's3 is exact');
  t.is(engine.get('s3')?.state, 'ok');
  let corrupted = 0;
  for (let s = events.oldestSeq; s < events.headSeq; s++) if (events.get(s)?.type === 'corrupted') corrupted++;
  t.is(corrupted, 1, 'one corrupted event, for s2');
  t.is(engine.savedChunks, 16 + 16 + 32, 'the failed run keeps nothing');
  t.is(engine.storage.stats().used, engine.savedChunks * CHUNK, 'its slots went back');
  engine.destroy('s2');
  t.is(engine.storage.stats().used, engine.savedChunks * CHUNK);
});

test('a run over data and holes of the origin: one read, the stretches of data written, the holes saved as holes', async (t) => {
  const { engine, originPath } = await openEngine(t, { size: 4 * MiB, chunkSize: CHUNK, diffSize: 4 * MiB, sparse: true });
  // Data in chunks 0..2, 6..8 and 10..15 of the first MiB; chunks 3..5 and 9 are holes.
  const fh = await fsp.open(originPath, 'r+');
  for (const [from, to] of [[0, 3], [6, 9], [10, 16]] as const) await fh.write(randomBytes((to - from) * CHUNK), 0, (to - from) * CHUNK, from * CHUNK);
  await fh.datasync();
  await fh.close();
  const v0 = await readOrigin(engine);
  await engine.take('s'); // the origin's allocation is looked at again at a take
  const { reads, writes } = countRequests(engine);
  await write(engine, 0, randomBytes(MiB));
  t.deepEqual(reads, [[0, 16]], 'one read of the run');
  t.deepEqual(writes, [[0, 3], [3, 3], [6, 6]], 'one write per stretch of data, into slots in a row');
  t.is(engine.savedHoles, 4);
  t.is(engine.savedChunks, 12);
  t.is(engine.storage.stats().used, 12 * CHUNK);
  t.true((await readImage(engine, 's')).equals(v0), 'the image reads its data and its zeros');
});

test('a run in pieces (a fragmented free list) settles all its chunks at once, after its last write', async (t) => {
  const { engine } = await openEngine(t, { size: 1 * MiB, chunkSize: CHUNK, diffSize: 1 * MiB });
  const storage = engine.storage;
  // Slots 1 and 2 free, 0 and 3 taken: a run of 4 gets {1, 2} and then {4, 5}.
  const taken = await storage.allocateRun(4);
  t.deepEqual(taken, { slot: 0, count: 4 });
  storage.release(2);
  storage.release(1);
  const second = gate();
  const secondStarted = gate();
  const pieces: Array<[number, number]> = [];
  const plainWrite = storage.writeSlots.bind(storage);
  storage.writeSlots = async (slot, count, buf) => {
    pieces.push([slot, count]);
    if (pieces.length === 2) {
      secondStarted.open(); // the first piece is written by now
      await second.opened;
    }
    await plainWrite(slot, count, buf);
  };
  const copies = new ChunkCopies({
    origin: engine.origin,
    store: new DiffStorageExceptions(storage),
    chunkSize: CHUNK,
    originSize: engine.originSize,
    pool: new AlignedBufferPool(4 * CHUNK, 2),
    slotReused: () => undefined,
    needed: () => true,
    ownedByAll: () => false,
    failed: () => t.fail('nothing fails here'),
  });
  const prepared = copies.prepareWrite(0, 3, 1);
  t.not(prepared, null);
  await secondStarted.opened;
  t.deepEqual(pieces, [[1, 2], [4, 2]]);
  t.is(copies.savedSlot(0, 1), -1, 'chunk 0 is written but not recorded before the run settles');
  t.not(copies.prepareWrite(0, 0, 1), null, 'a write to chunk 0 still waits for the run');
  t.is(copies.copying, 4);
  second.open();
  await prepared;
  t.is(copies.copying, 0);
  t.deepEqual([0, 1, 2, 3].map((c) => copies.savedSlot(c, 1)), [1, 2, 4, 5]);
  t.is(copies.prepareWrite(0, 3, 1), null, 'all four need no copy now, together');
});

test('the storage hands out runs in one file: the free list first and lowest first, then fresh space up to the end of a file; a file grown at its end continues its run', async (t) => {
  const { engine, dir } = await openEngine(t, { size: 1 * MiB, chunkSize: CHUNK, diffSize: 6 * CHUNK });
  const storage: DiffStorage = engine.storage;
  const second = await DiffStorageFile.open(join(dir, 'second'), 4 * CHUNK, { existing: 'empty', checkPlace: async () => undefined });
  storage.addFile(second);
  t.is(storage.stats().size, 10 * CHUNK);
  t.deepEqual(await storage.allocateRun(4), { slot: 0, count: 4 });
  t.deepEqual(await storage.allocateRun(4), { slot: 4, count: 2 }, 'the rest of the first file');
  t.deepEqual(await storage.allocateRun(2), { slot: 6, count: 2 }, 'the second file');
  t.is(storage.contiguousSlots(4, 10), 2);
  t.is(storage.contiguousSlots(6, 10), 4);
  // Growth adds at the end of the newest file: the same run of slots goes on.
  await storage.extend(3 * CHUNK);
  t.is(storage.contiguousSlots(6, 10), 7);
  t.deepEqual(await storage.allocateRun(10), { slot: 8, count: 5 });
  t.is(storage.stats().used, 13 * CHUNK);
  // Released out of order: taken back lowest first, in a row where they are in a row.
  for (const slot of [5, 2, 9, 1, 3]) storage.release(slot);
  t.is(storage.stats().used, 8 * CHUNK);
  t.deepEqual(await storage.allocateRun(8), { slot: 1, count: 3 });
  t.deepEqual(await storage.allocateRun(8), { slot: 5, count: 1 }, 'slot 6 is in use');
  t.deepEqual(await storage.allocateRun(8), { slot: 9, count: 1 });
  t.is(storage.stats().used, 13 * CHUNK);
  await t.throwsAsync(() => storage.allocateRun(1), { code: 'ENOSPC' });
  // Bytes written across the two extents of the second file read back in one request.
  const data = Buffer.alloc(5 * CHUNK);
  for (let i = 0; i < 5; i++) data.fill(i + 1, i * CHUNK, (i + 1) * CHUNK);
  const aligned = allocAligned(5 * CHUNK);
  data.copy(aligned);
  await storage.writeSlots(8, 5, aligned);
  const back = allocAligned(7 * CHUNK);
  await storage.readChunkPart(6, 2 * CHUNK, 5 * CHUNK, back);
  t.true(back.subarray(0, 5 * CHUNK).equals(data));
  await t.throwsAsync(() => storage.readChunkPart(4, 0, 3 * CHUNK, back), { code: 'EIO' }, 'a read may not leave its file\'s run of slots');
});
