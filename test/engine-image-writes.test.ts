/**
 * Writes to snapshot images, on the engine (no FUSE): private chunks, never the origin
 * or a shared saved copy; single flight per (snapshot, chunk); races with origin
 * writes; ENOSPC without corruption; space freed with the snapshot; change maps.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { KiB, MiB } from './helpers/fixture.js';
import { openEngine, readImage, readOrigin } from './helpers/engine-fixture.js';
import type { SnapshotEngine } from '../src/engine/engine.js';
import type { Snapshot } from '../src/engine/snapshot.js';

const CHUNK = 64 * KiB;

function snapshot(engine: SnapshotEngine, name: string): Snapshot {
  const snap = engine.get(name);
  if (snap === undefined) throw new Error(`no snapshot ${name}`);
  return snap;
}

async function writeImage(engine: SnapshotEngine, name: string, position: number, data: Buffer): Promise<void> {
  await engine.writeImage(snapshot(engine, name), data, 0, data.length, position);
}

test('an image write changes that image only: not the origin, not a snapshot sharing the saved copy', async (t) => {
  const { engine } = await openEngine(t, { size: 2 * MiB, chunkSize: CHUNK, diffSize: 4 * MiB });
  const v0 = await readOrigin(engine);
  await engine.take('a');
  await engine.take('b');
  await engine.writeOrigin(randomBytes(CHUNK), 0, CHUNK, 0); // one saved copy of chunk 0 serves a and b
  t.is(engine.savedChunks, 1);
  const origin = await readOrigin(engine);
  const data = randomBytes(3000);
  await writeImage(engine, 'b', CHUNK - 1000, data); // chunk 0 (saved, shared) and chunk 1 (still on the origin)
  t.is(engine.privateChunks, 2);
  const b = await readImage(engine, 'b');
  const expected = Buffer.from(v0);
  data.copy(expected, CHUNK - 1000);
  t.true(b.equals(expected), 'b reads its write and its old data around it');
  t.true((await readImage(engine, 'a')).equals(v0), 'a, which shares the saved copy, is unchanged');
  t.true((await readOrigin(engine)).equals(origin), 'the origin is unchanged');
  // A later origin write to chunk 1 never reaches b's own copy.
  await engine.writeOrigin(randomBytes(2 * CHUNK), 0, 2 * CHUNK, CHUNK);
  t.true((await readImage(engine, 'b')).equals(expected));
  t.true((await readImage(engine, 'a')).equals(v0));
  t.is(snapshot(engine, 'b').state, 'ok');
});

test('unaligned writes of every size land exactly (read-modify-write of partial blocks)', async (t) => {
  const { engine } = await openEngine(t, { size: 1 * MiB, chunkSize: CHUNK, diffSize: 4 * MiB });
  const model = await readOrigin(engine);
  await engine.take('s');
  await engine.writeOrigin(randomBytes(100 * KiB), 0, 100 * KiB, 300 * KiB);
  for (let i = 0; i < 60; i++) {
    const length = 1 + Math.floor(Math.random() * (i % 3 === 0 ? 200 * KiB : 9000));
    const position = Math.floor(Math.random() * (model.length - length));
    const data = randomBytes(length);
    await writeImage(engine, 's', position, data);
    data.copy(model, position);
  }
  t.true((await readImage(engine, 's')).equals(model));
  // Small reads too (they would hit a window cache if private chunks were cached).
  for (let i = 0; i < 50; i++) {
    const pos = Math.floor(Math.random() * (model.length - 512));
    t.true((await readImage(engine, 's', pos, 512)).equals(model.subarray(pos, pos + 512)));
    const data = randomBytes(100);
    await writeImage(engine, 's', pos + 7, data);
    data.copy(model, pos + 7);
    t.true((await readImage(engine, 's', pos, 512)).equals(model.subarray(pos, pos + 512)), 'a read after a write sees it');
  }
});

test('writes racing to the same chunk make one private copy, and none of them is lost', async (t) => {
  const { engine } = await openEngine(t, { size: 1 * MiB, chunkSize: CHUNK, diffSize: 4 * MiB });
  const model = await readOrigin(engine);
  await engine.take('s');
  // Slow difference-storage writes: every racer arrives while the first copy is being made.
  const storage = engine.storage;
  const plainWrite = storage.writeChunk.bind(storage);
  storage.writeChunk = async (slot, buf) => {
    await new Promise((r) => setTimeout(r, 30));
    return plainWrite(slot, buf);
  };
  const writes: Array<Promise<void>> = [];
  for (let i = 0; i < 32; i++) {
    // 100-byte writes, several in the same 4 KiB block: unordered read-modify-writes would undo each other.
    const data = Buffer.alloc(100, i + 1);
    const position = CHUNK + i * 700;
    data.copy(model, position);
    writes.push(writeImage(engine, 's', position, data));
  }
  await Promise.all(writes);
  t.is(engine.privateChunks, 1, 'one private copy for the chunk');
  t.is(engine.storage.stats().used, CHUNK, 'and one slot used');
  t.true((await readImage(engine, 's')).equals(model));
});

test('an image write racing an origin write to the same chunk keeps the snapshot\'s old data', async (t) => {
  const { engine } = await openEngine(t, { size: 2 * MiB, chunkSize: CHUNK, diffSize: 8 * MiB });
  const v0 = await readOrigin(engine);
  await engine.take('s');
  // The first origin read of each chunk (the private copy's) is slow: it is still in
  // flight when the origin write, issued just after, has saved its copy and wants to
  // overwrite the chunk. A writer that did not wait for it would land first, and the
  // private copy would hold the new origin data.
  const origin = engine.origin;
  const plainRead = origin.read.bind(origin);
  const seen = new Set<number>();
  origin.read = async (buf, offset, length, position) => {
    if (!seen.has(position)) {
      seen.add(position);
      await new Promise((r) => setTimeout(r, 60));
    }
    return plainRead(buf, offset, length, position);
  };
  const model = Buffer.from(v0);
  const racers: Array<Promise<void>> = [];
  for (let i = 0; i < 16; i++) {
    const data = randomBytes(1000);
    data.copy(model, i * CHUNK + 5000);
    racers.push(writeImage(engine, 's', i * CHUNK + 5000, data));
  }
  await new Promise((r) => setTimeout(r, 10));
  for (let i = 0; i < 16; i++) racers.push(engine.writeOrigin(randomBytes(CHUNK), 0, CHUNK, i * CHUNK));
  await Promise.all(racers);
  t.true((await readImage(engine, 's')).equals(model), 'old data plus the image writes, never origin data');
  t.is(snapshot(engine, 's').state, 'ok');
});

test('no space for a private copy: ENOSPC, nothing of the write lands, the snapshot stays ok', async (t) => {
  const { engine } = await openEngine(t, { size: 2 * MiB, chunkSize: CHUNK, diffSize: 6 * CHUNK });
  const v0 = await readOrigin(engine);
  await engine.take('s');
  await engine.writeOrigin(randomBytes(2 * CHUNK), 0, 2 * CHUNK, 0); // two saved copies
  const model = Buffer.from(v0);
  const small = randomBytes(CHUNK);
  await writeImage(engine, 's', 4 * CHUNK, small); // a third slot
  small.copy(model, 4 * CHUNK);
  // Eight chunks, three slots left: the whole write fails, none of it is written.
  const big = randomBytes(8 * CHUNK);
  await t.throwsAsync(() => writeImage(engine, 's', 8 * CHUNK, big), { code: 'ENOSPC' });
  t.is(engine.storage.stats().used, 3 * CHUNK, 'a failed write keeps no space');
  t.is(engine.privateChunks, 1);
  const snap = snapshot(engine, 's');
  t.is(snap.state, 'ok');
  t.is(snap.error, null);
  t.true((await readImage(engine, 's')).equals(model), 'the image is exact: old data, the earlier write');
  // The origin still works, and writes to chunks already saved need no space.
  const again = randomBytes(2 * CHUNK);
  await engine.writeOrigin(again, 0, 2 * CHUNK, 0);
  t.true((await readOrigin(engine)).subarray(0, 2 * CHUNK).equals(again));
  t.true((await readImage(engine, 's')).equals(model));
  t.is(snap.state, 'ok');
  // Writes into chunks the image already owns still work.
  const into = randomBytes(100);
  await writeImage(engine, 's', 4 * CHUNK + 10, into);
  into.copy(model, 4 * CHUNK + 10);
  t.true((await readImage(engine, 's')).equals(model));
});

test('private chunks are freed with the snapshot, also after rmdir while open', async (t) => {
  const { engine } = await openEngine(t, { size: 1 * MiB, chunkSize: CHUNK, diffSize: 4 * MiB });
  const v0 = await readOrigin(engine);
  const snap = await engine.take('x');
  engine.acquire(snap); // an open image
  engine.destroy('x');
  const data = randomBytes(3 * CHUNK);
  await engine.writeImage(snap, data, 0, data.length, 10);
  t.is(engine.privateChunks, 4);
  t.is(engine.storage.stats().used, 4 * CHUNK);
  const buf = Buffer.alloc(MiB);
  await engine.readImage(snap, buf, 0, MiB, 0);
  const expected = Buffer.from(v0);
  data.copy(expected, 10);
  t.true(buf.equals(expected), 'the destroyed but open image reads its writes');
  t.true((await readOrigin(engine)).equals(v0));
  engine.release(snap);
  t.is(engine.privateChunks, 0);
  t.is(engine.storage.stats().used, 0, 'freed at the last close');
  await t.throwsAsync(() => engine.writeImage(snap, data, 0, 10, 0), { code: 'ENOENT' });
});

test('image writes mark the active map and the snapshot\'s own map; a corrupted snapshot refuses them', async (t) => {
  const { engine } = await openEngine(t, { size: 4 * MiB, chunkSize: CHUNK, diffSize: 2 * CHUNK });
  const older = await engine.take('older');
  const snap = await engine.take('s');
  const block = engine.tracker.blockSize;
  await writeImage(engine, 's', 5 * block + 100, randomBytes(block)); // blocks 5 and 6
  t.is(snap.cbt.map[5], snap.cbt.changesNumber);
  t.is(snap.cbt.map[6], snap.cbt.changesNumber);
  t.is(snap.cbt.map[7], 0);
  t.is(older.cbt.map[5], 0, 'another snapshot\'s map is not touched');
  const next = await engine.take('next');
  t.true((next.cbt.map[5] ?? 0) > snap.cbt.changesNumber);
  t.true((next.cbt.map[6] ?? 0) > snap.cbt.changesNumber);
  t.is(next.cbt.map[7], 0);
  // Overflow by origin writes corrupts s; its image then fails EIO for writes too.
  await engine.writeOrigin(randomBytes(MiB), 0, MiB, MiB);
  t.is(snap.state, 'corrupted');
  await t.throwsAsync(() => writeImage(engine, 's', 0, randomBytes(10)), { code: 'EIO' });
  await t.throwsAsync(() => writeImage(engine, 's', 4 * MiB - 5, randomBytes(10)), { code: 'EINVAL' });
});

test('a failing difference storage: a copy that cannot be made fails the write only; a failed data write corrupts the snapshot', async (t) => {
  const { engine, events } = await openEngine(t, { size: 1 * MiB, chunkSize: CHUNK, diffSize: 4 * MiB });
  const v0 = await readOrigin(engine);
  const snap = await engine.take('s');
  const storage = engine.storage;
  const plainWriteChunk = storage.writeChunk.bind(storage);
  const fail = (): Promise<void> => Promise.reject(Object.assign(new Error('injected EIO'), { code: 'EIO' }));
  // The private copy cannot be written: the write fails, nothing is recorded, nothing is kept.
  storage.writeChunk = fail;
  await t.throwsAsync(() => writeImage(engine, 's', 100, randomBytes(10)), { code: 'EIO' });
  t.is(snap.state, 'ok');
  t.is(engine.privateChunks, 0);
  t.is(engine.storage.stats().used, 0);
  t.true((await readImage(engine, 's')).equals(v0));
  storage.writeChunk = plainWriteChunk;
  // The copy is made but the caller's bytes cannot be written into it: its contents are
  // unknown now, so the snapshot is corrupted (one event) and its image reads EIO.
  const plainWritePart = storage.writeChunkPart.bind(storage);
  storage.writeChunkPart = fail;
  await t.throwsAsync(() => writeImage(engine, 's', 100, randomBytes(10)), { code: 'EIO' });
  storage.writeChunkPart = plainWritePart;
  t.is(snap.state, 'corrupted');
  t.is(snap.error, 'EIO');
  await t.throwsAsync(() => readImage(engine, 's'), { code: 'EIO' });
  let corrupted = 0;
  for (let s = events.oldestSeq; s < events.headSeq; s++) if (events.get(s)?.type === 'corrupted') corrupted++;
  t.is(corrupted, 1);
  // The origin carries on.
  const data = randomBytes(CHUNK);
  await engine.writeOrigin(data, 0, CHUNK, 0);
  t.true((await readOrigin(engine)).subarray(0, CHUNK).equals(data));
});

test('no saved copy is made for a chunk that every snapshot needing it owns privately', async (t) => {
  const { engine } = await openEngine(t, { size: 1 * MiB, chunkSize: CHUNK, diffSize: 4 * MiB });
  const v0 = await readOrigin(engine);
  const a = await engine.take('a');
  const b = await engine.take('b');
  const inA = randomBytes(100);
  const inB = randomBytes(100);
  await writeImage(engine, 'a', 10, inA);
  await writeImage(engine, 'b', 20, inB);
  await writeImage(engine, 'b', CHUNK + 20, inB); // chunk 1: only b owns it
  await engine.writeOrigin(randomBytes(2 * CHUNK), 0, 2 * CHUNK, 0);
  t.is(engine.savedChunks, 1, 'chunk 0 needs no saved copy (a and b own it); chunk 1 does (for a)');
  const expectA = Buffer.from(v0);
  inA.copy(expectA, 10);
  const expectB = Buffer.from(v0);
  inB.copy(expectB, 20);
  inB.copy(expectB, CHUNK + 20);
  t.true((await readImage(engine, 'a')).equals(expectA));
  t.true((await readImage(engine, 'b')).equals(expectB));
  // A snapshot taken later gets its copies as usual.
  const v1 = await readOrigin(engine);
  await engine.take('c');
  await engine.writeOrigin(randomBytes(2 * CHUNK), 0, 2 * CHUNK, 0);
  t.is(engine.savedChunks, 3);
  t.true((await readImage(engine, 'c')).equals(v1));
  t.true((await readImage(engine, 'a')).equals(expectA));
  t.is(a.state, 'ok');
  t.is(b.state, 'ok');
});
