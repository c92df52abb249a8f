/**
 * Holes in the engine (no FUSE): a chunk that is wholly a hole is saved as a hole (no
 * read, no slot) and its image keeps reporting it; SEEK_DATA/SEEK_HOLE of an image are
 * the snapshot's, decided under the origin-reader registration so that a punch racing
 * a seek waits for it; fallocate on the origin is a write of zeros for snapshots.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import type { SnapshotEngine } from '../src/engine/engine.js';
import type { Snapshot } from '../src/engine/snapshot.js';
import { KiB, MiB } from './helpers/fixture.js';
import { openEngine, readImage, readOrigin } from './helpers/engine-fixture.js';

const CHUNK = 64 * KiB;

function snapOf(engine: SnapshotEngine, name: string): Snapshot {
  const snap = engine.get(name);
  if (snap === undefined) throw new Error(`no snapshot ${name}`);
  return snap;
}

/** Data written into the origin file itself, before anything is taken. */
async function putData(path: string, position: number, data: Buffer): Promise<void> {
  const fh = await fsp.open(path, 'r+');
  try {
    await fh.write(data, 0, data.length, position);
    await fh.datasync();
  } finally {
    await fh.close();
  }
}

/** The data runs of an image, as SEEK_DATA/SEEK_HOLE walk them. */
async function dataRuns(engine: SnapshotEngine, snap: Snapshot): Promise<Array<[number, number]>> {
  const runs: Array<[number, number]> = [];
  for (let pos = 0; pos < engine.originSize;) {
    const data = await engine.seekImage(snap, pos, 'data');
    if (data === null) break;
    const hole = await engine.seekImage(snap, data, 'hole');
    runs.push([data, hole ?? engine.originSize]);
    pos = hole ?? engine.originSize;
  }
  return runs;
}

/** Turns of the event loop: enough for any I/O that is not held back to finish. */
async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 100_000 && !cond(); i++) await new Promise((r) => setImmediate(r));
  if (!cond()) throw new Error(`never: ${what}`);
}

test('a first write into a hole saves the chunk as a hole: no slot, the image reads zeros and reports a hole', async (t) => {
  const { engine, originPath } = await openEngine(t, { size: 8 * MiB, chunkSize: CHUNK, diffSize: 4 * MiB, sparse: true });
  const data = randomBytes(CHUNK);
  await putData(originPath, 4 * MiB, data);
  await engine.take('s');
  const snap = snapOf(engine, 's');
  const usedBefore = engine.storage.stats().used;

  await engine.writeOrigin(randomBytes(4 * KiB), 0, 4 * KiB, MiB + 100); // into a hole
  t.is(engine.savedHoles, 1);
  t.is(engine.savedChunks, 0);
  t.is(engine.storage.stats().used, usedBefore, 'no difference storage used');
  t.true((await readImage(engine, 's', MiB, CHUNK)).equals(Buffer.alloc(CHUNK)));
  t.deepEqual(await dataRuns(engine, snap), [[4 * MiB, 4 * MiB + CHUNK]], 'still a hole in the image');
  t.is(await engine.seekOrigin(MiB, 'data'), MiB, 'data on the origin');

  // A chunk with data is copied as data, whole; one with a single 4 KiB block of data too.
  await putData(originPath, 6 * MiB + 8 * KiB, randomBytes(4 * KiB)); // outside the mount: only to shape the test
  await engine.writeOrigin(randomBytes(10), 0, 10, 4 * MiB);
  t.is(engine.savedChunks, 1);
  t.true((await readImage(engine, 's', 4 * MiB, CHUNK)).equals(data));
  t.deepEqual((await dataRuns(engine, snap))[0], [4 * MiB, 4 * MiB + CHUNK]);

  // Released with its snapshot: the hole record gives nothing back to the store (and breaks nothing).
  engine.destroy('s');
  t.is(engine.savedHoles, 0);
  t.is(engine.savedChunks, 0);
  t.is(engine.storage.stats().used, usedBefore);
});

test('SEEK_DATA/SEEK_HOLE of an image: holes inside chunks on the origin, saved and private chunks are data', async (t) => {
  const { engine, originPath } = await openEngine(t, { size: 4 * MiB, chunkSize: CHUNK, diffSize: 4 * MiB, sparse: true });
  await putData(originPath, 8 * KiB, randomBytes(4 * KiB)); // chunk 0: one block of data
  await putData(originPath, MiB, randomBytes(2 * CHUNK)); // chunks 16, 17
  await engine.take('s');
  const snap = snapOf(engine, 's');
  t.deepEqual(await dataRuns(engine, snap), [[8 * KiB, 12 * KiB], [MiB, MiB + 2 * CHUNK]]);
  t.is(await engine.seekImage(snap, 9 * KiB, 'data'), 9 * KiB);
  t.is(await engine.seekImage(snap, 9 * KiB, 'hole'), 12 * KiB);
  t.is(await engine.seekImage(snap, MiB + 2 * CHUNK, 'data'), null, 'only holes follow: ENXIO for the caller');

  // Chunk 0 saved (its data copied whole): the whole chunk is data now; a private chunk is data too.
  await engine.writeOrigin(randomBytes(10), 0, 10, 0);
  await engine.writeImage(snap, randomBytes(10), 0, 10, 2 * MiB + 5);
  t.deepEqual(await dataRuns(engine, snap), [[0, CHUNK], [MiB, MiB + 2 * CHUNK], [2 * MiB, 2 * MiB + CHUNK]]);
  // What it reports as holes reads as zeros, and the origin's holes are not the image's.
  await engine.writeOrigin(randomBytes(CHUNK), 0, CHUNK, 3 * MiB);
  t.true((await readImage(engine, 's', 3 * MiB, CHUNK)).equals(Buffer.alloc(CHUNK)));
  t.is(await engine.seekImage(snap, 3 * MiB, 'data'), null);
});

test('a punch racing an image seek waits for it: the seek sees the snapshot, never the punched origin', async (t) => {
  const { engine, originPath } = await openEngine(t, { size: 2 * MiB, chunkSize: CHUNK, diffSize: 4 * MiB, sparse: true });
  const data = randomBytes(CHUNK);
  await putData(originPath, 0, data);
  await engine.take('s');
  const snap = snapOf(engine, 's');
  // Hold the image seek's lseek of the origin (only the first one: the copy-on-write of
  // the punch asks the origin too, and must go on).
  const origin = engine.origin;
  const plainSeek = origin.seekData.bind(origin);
  let release = (): void => undefined;
  const held = new Promise<void>((r) => (release = r));
  let entered = false;
  origin.seekData = async (offset) => {
    if (!entered) {
      entered = true;
      await held;
    }
    return plainSeek(offset);
  };
  let punched = false;
  const plainFallocate = origin.fallocate.bind(origin);
  origin.fallocate = async (kind, offset, length) => {
    await plainFallocate(kind, offset, length);
    punched = true;
  };

  const seek = engine.seekImage(snap, 0, 'data');
  await until(() => entered, 'the seek reached the origin');
  const punch = engine.fallocateOrigin('punch', 0, CHUNK);
  await until(() => engine.savedChunks === 1, 'the punch saved the chunk first');
  // The chunk is saved; the punch now waits for the seek, a registered reader of chunk 0.
  for (let i = 0; i < 1000; i++) await new Promise((r) => setImmediate(r));
  t.false(punched, 'the origin is not punched while the seek reads it');
  release();
  t.is(await seek, 0, 'data at 0, as in the snapshot');
  await punch;
  t.true(punched);
  t.true((await readOrigin(engine)).subarray(0, CHUNK).equals(Buffer.alloc(CHUNK)));
  t.true((await readImage(engine, 's', 0, CHUNK)).equals(data));
  t.is(await engine.seekImage(snap, 0, 'data'), 0, 'still data in the image (its saved copy)');
});

test('fallocate on the origin is a write of zeros: copied first, marked, then punched or zeroed; bad ranges change nothing', async (t) => {
  const { engine, originPath } = await openEngine(t, { size: 4 * MiB, chunkSize: CHUNK, diffSize: 8 * MiB });
  const v0 = await readOrigin(engine);
  await engine.take('s');
  const before = (await fsp.stat(originPath)).blocks;
  await engine.fallocateOrigin('punch', MiB, MiB);
  await engine.fallocateOrigin('zero', 3 * MiB + 512, 4 * KiB);
  const now = await readOrigin(engine);
  t.true(now.subarray(MiB, 2 * MiB).equals(Buffer.alloc(MiB)));
  t.true(now.subarray(3 * MiB + 512, 3 * MiB + 512 + 4 * KiB).equals(Buffer.alloc(4 * KiB)));
  t.true((await readImage(engine, 's')).equals(v0), 'the image keeps the old bytes');
  t.true((await fsp.stat(originPath)).blocks * 512 <= before * 512 - MiB, 'the punch gave the space back');
  t.is(engine.origin.allocatedBytes, (await fsp.stat(originPath)).blocks * 512, 'and st_blocks of /origin follows');
  const [first, last] = engine.tracker.blocksOf(MiB, MiB);
  await engine.take('t');
  const map = snapOf(engine, 't').cbt.map;
  const changed = snapOf(engine, 's').cbt.changesNumber;
  for (let b = first; b <= last; b++) t.true((map[b] ?? 0) > changed, `block ${b} marked`);
  t.is(map[0], snapOf(engine, 's').cbt.map[0], 'an untouched block is not');
  await t.throwsAsync(() => engine.fallocateOrigin('punch', 4 * MiB - 4 * KiB, 8 * KiB), { message: /outside the origin/ });
});

test('a wholly allocated origin is not asked where its holes are: its first writes copy as before', async (t) => {
  const { engine } = await openEngine(t, { size: 2 * MiB, chunkSize: CHUNK, diffSize: 4 * MiB });
  const origin = engine.origin;
  const plainSeek = origin.seekData.bind(origin);
  let asked = 0;
  origin.seekData = (offset) => {
    asked++;
    return plainSeek(offset);
  };
  const v0 = await readOrigin(engine);
  await engine.take('s');
  await engine.writeOrigin(randomBytes(4 * KiB), 0, 4 * KiB, 5 * CHUNK);
  t.is(asked, 0);
  t.is(engine.savedChunks, 1);
  t.true((await readImage(engine, 's')).equals(v0));
  // Punched through the engine, it has holes: from then on copies ask again.
  await engine.fallocateOrigin('punch', 8 * CHUNK, 2 * CHUNK);
  t.true(engine.origin.allocatedBytes < engine.originSize);
  await engine.take('t');
  await engine.writeOrigin(randomBytes(10), 0, 10, 8 * CHUNK);
  t.true(asked > 0);
  t.is(engine.savedHoles, 1, 'the punched chunk was saved as a hole for t');
});
