/**
 * The engine on plain files (no FUSE): copy-on-write, the take barrier, one saved copy
 * shared by every snapshot that needs it, lifetimes after destroy, and overflow.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { KiB, MiB } from './helpers/fixture.js';
import { openEngine, readImage, readOrigin } from './helpers/engine-fixture.js';

const CHUNK = 64 * KiB;

async function write(engine: import('../src/engine/engine.js').SnapshotEngine, position: number, data: Buffer): Promise<void> {
  await engine.writeOrigin(data, 0, data.length, position);
}

test('first write to a chunk saves it once; the image keeps the old bytes', async (t) => {
  const { engine } = await openEngine(t, { size: 4 * MiB, chunkSize: CHUNK, diffSize: 4 * MiB });
  const before = await readOrigin(engine);
  await engine.take('a');
  await write(engine, 100, randomBytes(10));
  await write(engine, 200, randomBytes(10)); // same chunk: no second copy
  t.is(engine.savedChunks, 1);
  await write(engine, CHUNK - 5, randomBytes(10)); // straddles chunks 0 and 1
  t.is(engine.savedChunks, 2);
  t.true((await readImage(engine, 'a')).equals(before));
});

test('one saved copy serves every snapshot taken since the chunk was last saved', async (t) => {
  const { engine } = await openEngine(t, { size: 2 * MiB, chunkSize: CHUNK, diffSize: 4 * MiB });
  const v0 = await readOrigin(engine);
  for (const name of ['s1', 's2', 's3', 's4']) await engine.take(name);
  await write(engine, 0, randomBytes(CHUNK * 4));
  t.is(engine.savedChunks, 4, 'four chunks saved once, not once per snapshot');
  for (const name of ['s1', 's2', 's3', 's4']) t.true((await readImage(engine, name)).equals(v0), name);
  const v1 = await readOrigin(engine);
  await engine.take('s5');
  await write(engine, 0, randomBytes(CHUNK));
  t.is(engine.savedChunks, 5);
  t.true((await readImage(engine, 's5')).equals(v1));
  t.true((await readImage(engine, 's1')).equals(v0));
});

test('destroying the middle snapshot leaves the others exact and frees what only it needed', async (t) => {
  const { engine } = await openEngine(t, { size: 2 * MiB, chunkSize: CHUNK, diffSize: 4 * MiB });
  const v0 = await readOrigin(engine);
  await engine.take('a');
  await write(engine, 0, randomBytes(3 * CHUNK));
  const v1 = await readOrigin(engine);
  await engine.take('b');
  await write(engine, CHUNK, randomBytes(3 * CHUNK));
  const v2 = await readOrigin(engine);
  await engine.take('c');
  await write(engine, 2 * CHUNK, randomBytes(3 * CHUNK));
  const usedBefore = engine.storage.stats().used;
  engine.destroy('b');
  t.true(engine.storage.stats().used < usedBefore, 'b alone needed some copies');
  t.true((await readImage(engine, 'a')).equals(v0));
  t.true((await readImage(engine, 'c')).equals(v2));
  t.false(v1.equals(v2));
  t.is(engine.get('b'), undefined);
});

test('a destroyed snapshot that is still referenced keeps its data and its copies', async (t) => {
  const { engine } = await openEngine(t, { size: 1 * MiB, chunkSize: CHUNK, diffSize: 2 * MiB });
  const v0 = await readOrigin(engine);
  const snap = await engine.take('x');
  engine.acquire(snap);
  engine.destroy('x');
  await write(engine, 0, randomBytes(MiB)); // still copied: an open file needs it
  const buf = Buffer.alloc(MiB);
  await engine.readImage(snap, buf, 0, MiB, 0);
  t.true(buf.equals(v0));
  t.true(engine.storage.stats().used > 0);
  engine.release(snap);
  t.is(engine.storage.stats().used, 0, 'released at the last reference');
  const again = await engine.take('x');
  t.not(again.uuid, snap.uuid);
  t.true((await readImage(engine, 'x')).equals(await readOrigin(engine)));
});

test('take is a barrier: writes in flight finish before it returns, later ones are copied', async (t) => {
  const { engine } = await openEngine(t, { size: 4 * MiB, chunkSize: CHUNK, diffSize: 8 * MiB });
  const marker = Buffer.alloc(4096, 0xab);
  // Slow origin writes, so the take surely arrives while they are in flight.
  const origin = engine.origin;
  const plainWrite = origin.write.bind(origin);
  origin.write = async (buf, offset, length, position) => {
    await new Promise((r) => setTimeout(r, 20));
    return plainWrite(buf, offset, length, position);
  };
  const writes: Array<Promise<void>> = [];
  for (let i = 0; i < 32; i++) writes.push(write(engine, i * CHUNK, marker));
  await engine.take('mid');
  // Without the barrier, writes still in flight would land after the take, unsaved,
  // and the image would change under the reader.
  const atTake = await readImage(engine, 'mid');
  await Promise.all(writes);
  for (let i = 0; i < 32; i++) await write(engine, i * CHUNK, Buffer.alloc(4096, 0xcd));
  const later = await readImage(engine, 'mid');
  t.true(later.equals(atTake), 'the image never changes after take returns');
  for (let i = 0; i < 32; i++) {
    t.true(atTake.subarray(i * CHUNK, i * CHUNK + 4096).equals(marker), `chunk ${i} was written before the take completed`);
  }
});

test('a read spanning a saved and an unsaved chunk returns the old data for both', async (t) => {
  const { engine } = await openEngine(t, { size: 1 * MiB, chunkSize: CHUNK, diffSize: 2 * MiB });
  const v0 = await readOrigin(engine);
  await engine.take('s');
  await write(engine, 0, randomBytes(CHUNK)); // chunk 0 saved, chunk 1 untouched
  const mixed = await readImage(engine, 's', CHUNK - 1000, 3000);
  t.true(mixed.equals(v0.subarray(CHUNK - 1000, CHUNK + 2000)));
  await write(engine, CHUNK, randomBytes(10)); // now chunk 1 too
  t.true((await readImage(engine, 's', CHUNK - 1000, 3000)).equals(v0.subarray(CHUNK - 1000, CHUNK + 2000)));
});

test('image reads racing writes to the same chunks never see new data', async (t) => {
  const { engine } = await openEngine(t, { size: 2 * MiB, chunkSize: CHUNK, diffSize: 4 * MiB });
  const v0 = await readOrigin(engine);
  await engine.take('s');
  const snap = engine.get('s');
  if (snap === undefined) throw new Error('no snapshot');
  // Make each image reader slow to start its origin read (the first read of a chunk is
  // the reader's: it is issued before the write below). A writer that did not wait for
  // registered readers would overwrite the origin first and the reader would see new data.
  const origin = engine.origin;
  const plainRead = origin.read.bind(origin);
  const seen = new Set<number>();
  origin.read = async (buf, offset, length, position) => {
    if (!seen.has(position)) {
      seen.add(position);
      await new Promise((r) => setTimeout(r, 30));
    }
    return plainRead(buf, offset, length, position);
  };
  const reads: Array<Promise<Buffer>> = [];
  const writes: Array<Promise<void>> = [];
  for (let i = 0; i < 16; i++) {
    const pos = i * CHUNK;
    const buf = Buffer.alloc(CHUNK);
    reads.push(engine.readImage(snap, buf, 0, CHUNK, pos).then(() => buf));
    writes.push(write(engine, pos, randomBytes(CHUNK)));
  }
  await Promise.all(writes);
  const got = await Promise.all(reads);
  got.forEach((buf, i) => t.true(buf.equals(v0.subarray(i * CHUNK, (i + 1) * CHUNK)), `chunk ${i}`));
});

test('overflow corrupts the snapshots that needed the copy; origin writes all land', async (t) => {
  const { engine, events } = await openEngine(t, { size: 4 * MiB, chunkSize: CHUNK, diffSize: 4 * CHUNK });
  await engine.take('small');
  const data = randomBytes(2 * MiB);
  await write(engine, 0, data); // needs 32 chunks, storage has 4
  t.true((await readOrigin(engine)).subarray(0, 2 * MiB).equals(data));
  const snap = engine.get('small');
  t.is(snap?.state, 'corrupted');
  t.is(snap?.error, 'ENOSPC');
  await t.throwsAsync(() => readImage(engine, 'small'), { message: /corrupted/ });
  const corrupted = [];
  for (let s = events.oldestSeq; s < events.headSeq; s++) if (events.get(s)?.type === 'corrupted') corrupted.push(s);
  t.is(corrupted.length, 1, 'one corrupted event, the first error wins');
  // A snapshot taken afterwards is unaffected once space is back.
  engine.destroy('small');
  const v1 = await readOrigin(engine);
  await engine.take('next');
  await write(engine, 0, randomBytes(CHUNK));
  t.true((await readImage(engine, 'next')).equals(v1));
});

test('names: bad ones are EINVAL, live ones EEXIST, missing ones ENOENT', async (t) => {
  const { engine } = await openEngine(t, { size: 1 * MiB, chunkSize: CHUNK, diffSize: 1 * MiB });
  for (const bad of ['', '.hidden', '-x', 'a/b', 'x'.repeat(65), 'sp ace']) {
    await t.throwsAsync(() => engine.take(bad), { instanceOf: Error, message: /bad snapshot name/ }, JSON.stringify(bad));
  }
  await engine.take('ok.name_1-2');
  await t.throwsAsync(() => engine.take('ok.name_1-2'), { message: /already exists/ });
  const both = await Promise.allSettled([engine.take('twin'), engine.take('twin')]);
  t.deepEqual(both.map((r) => r.status).sort(), ['fulfilled', 'rejected']);
  t.throws(() => engine.destroy('nope'), { message: /no snapshot/ });
});

test('writes past the end are refused by the engine, nothing changes', async (t) => {
  const { engine } = await openEngine(t, { size: 1 * MiB, chunkSize: CHUNK, diffSize: 1 * MiB });
  const before = await readOrigin(engine);
  await t.throwsAsync(() => write(engine, MiB - 10, Buffer.alloc(20)), { message: /outside the origin/ });
  t.true((await readOrigin(engine)).equals(before));
});

test('small reads are served from cached windows, never from a reused slot\'s previous life', async (t) => {
  const { engine } = await openEngine(t, { size: 1 * MiB, chunkSize: CHUNK, diffSize: CHUNK });
  const v0 = await readOrigin(engine);
  await engine.take('first');
  await write(engine, 0, randomBytes(100)); // chunk 0 -> the only slot
  for (let off = 0; off < CHUNK; off += 4096) {
    t.true((await readImage(engine, 'first', off, 4096)).equals(v0.subarray(off, off + 4096)));
  }
  engine.destroy('first'); // the slot is free again
  const v1 = await readOrigin(engine);
  await engine.take('second');
  await write(engine, 0, randomBytes(100)); // chunk 0 saved again, into the same slot
  for (let off = 0; off < CHUNK; off += 4096) {
    t.true((await readImage(engine, 'second', off, 4096)).equals(v1.subarray(off, off + 4096)), `offset ${off}`);
  }
});
