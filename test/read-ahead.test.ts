/**
 * Read-ahead of saved chunks for sequential image reads (engine, no FUSE): images read
 * in FUSE-sized requests stay exact across both sources, and read-ahead entries never
 * outlive the slot contents they were read from.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { KiB, MiB } from './helpers/fixture.js';
import { openEngine, readOrigin } from './helpers/engine-fixture.js';
import type { SnapshotEngine } from '../src/engine/engine.js';

const CHUNK = 64 * KiB;
const REQUEST = 128 * KiB; // what FUSE hands the daemon at most

/** Read an image the way a sequential reader through FUSE does: request after request. */
async function readSequentially(engine: SnapshotEngine, name: string, length = engine.originSize): Promise<Buffer> {
  const snap = engine.get(name);
  if (snap === undefined) throw new Error(`no snapshot ${name}`);
  const out = Buffer.alloc(length);
  for (let pos = 0; pos < length; pos += REQUEST) {
    const n = Math.min(REQUEST, length - pos);
    const part = Buffer.alloc(n);
    await engine.readImage(snap, part, 0, n, pos);
    part.copy(out, pos);
  }
  return out;
}

test('a sequential image read over saved and unsaved chunks returns the point in time', async (t) => {
  const { engine } = await openEngine(t, { size: 4 * MiB, chunkSize: CHUNK, diffSize: 4 * MiB });
  const v0 = await readOrigin(engine);
  await engine.take('a');
  for (let c = 0; c < 64; c += 2) await engine.writeOrigin(randomBytes(CHUNK), 0, CHUNK, c * CHUNK);
  t.is(engine.savedChunks, 32);
  t.true((await readSequentially(engine, 'a')).equals(v0), 'first pass');
  t.true((await readSequentially(engine, 'a')).equals(v0), 'second pass');
});

test('read-ahead entries never serve a reused slot\'s previous life', async (t) => {
  const { engine } = await openEngine(t, { size: 4 * MiB, chunkSize: CHUNK, diffSize: 4 * MiB });
  const v0 = await readOrigin(engine);
  await engine.take('first');
  await engine.writeOrigin(randomBytes(4 * MiB), 0, 4 * MiB, 0); // every chunk saved
  // Stop halfway: the read-ahead now holds windows of slots the rest of 'first' uses.
  t.true((await readSequentially(engine, 'first', 2 * MiB)).equals(v0.subarray(0, 2 * MiB)));
  engine.destroy('first'); // every slot is free again
  const v1 = await readOrigin(engine);
  await engine.take('second');
  await engine.writeOrigin(randomBytes(4 * MiB), 0, 4 * MiB, 0); // the same slots, new contents
  t.true((await readSequentially(engine, 'second')).equals(v1));
});
