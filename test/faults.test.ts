/**
 * Nothing lost when the disks fail: real blksnapfs mounts whose origin, difference
 * storage or log live on the fault-injection file system (test/helpers/fault-fs.ts),
 * which fails chosen reads, writes or fallocates with EIO or ENOSPC.
 *
 * Every scenario ends with the same checks (`verify`): every origin write the caller
 * saw succeed is on disk (the origin's backing ext4 file equals the test's model of
 * it), each affected snapshot is `corrupted` with the expected errno, its image reads
 * fail with EIO and /events has exactly one `corrupted` event for it; every other
 * snapshot is `ok` and its image is byte for byte the copy taken at its take; the
 * daemon still answers; `blksnapfs umount` works and the daemon exits.
 *
 * A difference-storage read that fails (scenario b, read) fails that image read with
 * EIO and nothing more: the contract makes a snapshot corrupted when a copy cannot be
 * made (its point in time is lost); a failed read loses nothing, so the snapshot
 * stays `ok` and reads correctly once the storage reads again.
 */
import test, { type ExecutionContext } from 'ava';
import { promises as fsp } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { CLI, KiB, MiB, daemonPids, isMounted, makeImage, mountImage, readRange, run, type Mounted } from './helpers/fixture.js';
import { EventTail } from './helpers/events.js';
import { startFaultFs, type FaultFs } from './helpers/fault-fs.js';
import { HEADER_BYTES } from '../src/storage/storage-mark.js';

const CHUNK = 64 * KiB;
const ORIGIN_SIZE = 4 * MiB;

interface Scene {
  ffs: FaultFs;
  m: Mounted;
  tail: EventTail;
  /** What the origin must hold: its first contents plus every write that succeeded. */
  disk: Buffer;
  /** Each snapshot's image as it must read: the model at its take. */
  taken: Map<string, Buffer>;
}

interface SceneSpec {
  /** -o options besides diff_storage and log. */
  options: string;
  /** Put the difference storage (and/or the log) on the fault file system too. */
  diffOnFaultFs?: boolean;
  logOnFaultFs?: boolean;
}

/** An origin image on the fault file system, mounted; /events followed from the start. */
async function setUp(t: ExecutionContext, spec: SceneSpec): Promise<Scene> {
  const ffs = await startFaultFs(t); // before the mount: its teardown runs after the unmount
  await makeImage(ffs.backingPath('disk.img'), ORIGIN_SIZE);
  const disk = await fsp.readFile(ffs.backingPath('disk.img'));
  const m = await mountImage(t, {
    origin: ffs.path('disk.img'),
    options: spec.options,
    ...(spec.diffOnFaultFs === true ? { diff: ffs.path('disk.diff') } : {}),
    ...(spec.logOnFaultFs === true ? { log: ffs.path('daemon.log') } : {}),
  });
  return { ffs, m, tail: new EventTail(t, m.mnt), disk, taken: new Map() };
}

async function take(s: Scene, name: string): Promise<void> {
  await fsp.mkdir(s.m.path('snapshots', name));
  s.taken.set(name, Buffer.from(s.disk));
}

/**
 * Write `length` fresh random bytes at `position` of /origin through the mount, in one
 * write(2). The model takes the bytes only if the caller saw the write succeed.
 * Resolves to null or the errno.
 */
async function writeBytes(s: Scene, position: number, length: number): Promise<string | null> {
  const data = randomBytes(length);
  const fh = await fsp.open(s.m.path('origin'), 'r+');
  try {
    const { bytesWritten } = await fh.write(data, 0, length, position);
    if (bytesWritten !== length) return `short write of ${bytesWritten}`;
  } catch (err) {
    return (err as { code?: string }).code ?? String(err);
  } finally {
    await fh.close();
  }
  data.copy(s.disk, position);
  return null;
}

/** Overwrite one whole chunk (see writeBytes). */
function writeChunk(s: Scene, chunk: number): Promise<string | null> {
  return writeBytes(s, chunk * CHUNK, CHUNK);
}

/** The first chunk where two buffers differ (-1: equal). */
function firstDifference(actual: Buffer, expected: Buffer): number {
  if (actual.length !== expected.length) return -2;
  for (let off = 0; off < expected.length; off += CHUNK) {
    if (!actual.subarray(off, off + CHUNK).equals(expected.subarray(off, off + CHUNK))) return off / CHUNK;
  }
  return -1;
}

async function readError(path: string): Promise<string | null> {
  try {
    await readRange(path, 0, ORIGIN_SIZE);
    return null;
  } catch (err) {
    return (err as { code?: string }).code ?? String(err);
  }
}

/** The checks every scenario ends with (see the header); `corrupted` maps names to the errno expected. */
async function verify(t: ExecutionContext, s: Scene, corrupted: Record<string, string>): Promise<void> {
  await s.ffs.heal();
  for (const name of Object.keys(corrupted)) await s.tail.waitType('corrupted', name);
  // One more snapshot: once its event is out, every earlier event is too (events come in seq order).
  await take(s, 'last');
  await s.tail.waitType('snapshot-taken', 'last');

  t.is(firstDifference(await fsp.readFile(s.ffs.backingPath('disk.img')), s.disk), -1,
    'every origin write that succeeded is on disk, and nothing else');
  t.is(firstDifference(await readRange(s.m.path('origin'), 0, ORIGIN_SIZE), s.disk), -1, '/origin reads the same');

  for (const [name, copy] of s.taken) {
    const info = await s.m.info(name);
    const events = s.tail.of('corrupted', name);
    const expected = corrupted[name];
    if (expected !== undefined) {
      t.is(info['state'], 'corrupted', `${name} is corrupted`);
      t.is(info['error'], expected, `${name}'s error`);
      t.is(events.length, 1, `exactly one corrupted event for ${name}`);
      t.is(events[0]?.['error'], expected, `${name}'s event names the error`);
      t.is(await readError(s.m.path('snapshots', name, 'image')), 'EIO', `${name}'s image reads fail with EIO`);
    } else {
      t.is(info['state'], 'ok', `${name} is unaffected`);
      t.is(info['error'], null, `${name} has no error`);
      t.is(events.length, 0, `no corrupted event for ${name}`);
      t.is(firstDifference(await readRange(s.m.path('snapshots', name, 'image'), 0, ORIGIN_SIZE), copy), -1,
        `${name}'s image is the origin as it was at its take`);
    }
  }

  t.truthy((await s.m.status())['diff_storage'], 'the daemon still answers');
  t.is((await daemonPids(s.m.mnt)).length, 1, 'the daemon is still running');
  // Stop following /events (an open file keeps the mount busy), then unmount.
  if (s.tail.child.pid !== undefined) process.kill(-s.tail.child.pid, 'SIGKILL');
  await s.tail.exited;
  const u = await run(process.execPath, [CLI, 'umount', s.m.mnt]);
  t.is(u.code, 0, `umount: ${u.stderr}`);
  t.false(await isMounted(s.m.mnt), 'unmounted');
  t.deepEqual(await daemonPids(s.m.mnt), [], 'the daemon exited');
}

// ---- a. the origin fails --------------------------------------------------------

test('origin EIO while copying a chunk: the write succeeds, only the snapshots that needed the copy are corrupted', async (t) => {
  const s = await setUp(t, { options: 'diff_size=8M,chunk_size=64K' });
  await take(s, 'a');
  t.is(await writeChunk(s, 0), null); // a's copy of chunk 0 is saved
  await take(s, 'b'); // b needs chunk 0 copied again; a does not
  await s.ffs.fail({ file: 'disk.img', op: 'read', errno: 'EIO', from: 0, to: CHUNK });
  t.is(await writeChunk(s, 0), null, 'the origin write succeeds although its copy failed');
  t.true(await s.ffs.fired() > 0, 'the fault fired');
  await s.ffs.heal();
  await take(s, 'c');
  t.is(await writeChunk(s, 1), null);
  t.is(await writeChunk(s, 0), null);
  await verify(t, s, { b: 'EIO' });
});

test('origin EIO on one chunk of a write while its other chunk is still being copied: a snapshot taken meanwhile stays exact', async (t) => {
  const s = await setUp(t, { options: 'diff_size=8M,chunk_size=64K' });
  await take(s, 'a');
  await s.ffs.fail({ file: 'disk.img', op: 'read', errno: 'EIO', from: 0, to: CHUNK });
  await s.ffs.fail({ file: 'disk.img', op: 'read', delayMs: 1500, from: CHUNK, to: 2 * CHUNK });
  const before = Buffer.from(s.disk);
  // 8 KiB across the boundary of chunks 0 and 1: one FUSE request (a larger write may be
  // split, and a take may then come between its requests). Chunk 0's copy fails, chunk 1's is held.
  const writing = writeBytes(s, CHUNK - 4 * KiB, 8 * KiB);
  await s.ffs.waitFired(2); // chunk 0's copy has failed, chunk 1's is held
  const taking = fsp.mkdir(s.m.path('snapshots', 'b')); // must wait until the write has left
  t.is(await writing, null, 'the origin write succeeds although one of its copies failed');
  await taking;
  const after = Buffer.from(s.disk);
  await s.ffs.heal();
  t.is(await writeChunk(s, 1), null, 'a write after the take: never part of b');
  // b was taken after the write or before it, never in its middle.
  const image = await readRange(s.m.path('snapshots', 'b', 'image'), 0, ORIGIN_SIZE);
  s.taken.set('b', image.equals(before) ? before : after);
  await verify(t, s, { a: 'EIO' });
});

test('origin EIO on the write itself: the caller sees EIO, every snapshot stays exact', async (t) => {
  const s = await setUp(t, { options: 'diff_size=8M,chunk_size=64K' });
  await take(s, 'a');
  await s.ffs.fail({ file: 'disk.img', op: 'write', errno: 'EIO', from: 3 * CHUNK, to: 4 * CHUNK });
  t.is(await writeChunk(s, 3), 'EIO', "the origin's own failure reaches the writer");
  t.is(await writeChunk(s, 2), null, 'other chunks are written');
  t.true(await s.ffs.fired() > 0, 'the fault fired');
  await s.ffs.heal();
  await take(s, 'b');
  t.is(await writeChunk(s, 3), null, 'the same chunk is written once the disk works');
  await verify(t, s, {});
});

// ---- b. the difference storage fails --------------------------------------------

test('difference storage EIO on write: the snapshot that needed the copy is corrupted, the origin write succeeds', async (t) => {
  const s = await setUp(t, { options: 'diff_size=8M,chunk_size=64K', diffOnFaultFs: true });
  await take(s, 'a');
  t.is(await writeChunk(s, 0), null);
  await take(s, 'b');
  await s.ffs.fail({ file: 'disk.diff', op: 'write', errno: 'EIO' });
  t.is(await writeChunk(s, 0), null, 'the origin write succeeds although its copy could not be stored');
  t.true(await s.ffs.fired() > 0, 'the fault fired');
  await s.ffs.heal();
  await take(s, 'c');
  t.is(await writeChunk(s, 1), null);
  await verify(t, s, { b: 'EIO' });
});

test('difference storage EIO halfway through a run\'s O_DIRECT write: exactly the snapshot that needed the run is corrupted', async (t) => {
  const s = await setUp(t, { options: 'diff_size=8M,chunk_size=64K', diffOnFaultFs: true });
  await take(s, 'a');
  t.is(await writeBytes(s, 0, MiB), null); // chunks 0..15, one run into slots 0..15, for a
  await take(s, 'b'); // b needs chunks 0..15 again; a does not
  // The next run lands in slots 16..31: its write fails from its second half on.
  const run = HEADER_BYTES + 16 * CHUNK;
  await s.ffs.fail({ file: 'disk.diff', op: 'write', errno: 'EIO', from: run + MiB / 2, to: run + MiB });
  t.is(await writeBytes(s, 0, MiB), null, 'the origin write succeeds although its run could not be stored');
  t.true(await s.ffs.fired() > 0, 'the fault fired');
  const diff = await fsp.readFile(s.ffs.backingPath('disk.diff'));
  t.true(diff.subarray(run, run + MiB / 2).equals(s.taken.get('b')?.subarray(0, MiB / 2) ?? Buffer.alloc(0)), 'its first half did reach the storage');
  await s.ffs.heal();
  t.is(await writeBytes(s, MiB, MiB), null, 'a run for a and b, written');
  await take(s, 'c');
  t.is(await writeBytes(s, MiB / 2, MiB), null, 'runs for c');
  await verify(t, s, { b: 'EIO' });
});

test('difference storage EIO on read: that image read fails with EIO, the snapshot stays ok and reads right afterwards', async (t) => {
  const s = await setUp(t, { options: 'diff_size=8M,chunk_size=64K', diffOnFaultFs: true });
  await take(s, 'a');
  t.is(await writeChunk(s, 0), null); // a's chunk 0 now lives in the difference storage
  t.is(await writeChunk(s, 5), null);
  await s.ffs.fail({ file: 'disk.diff', op: 'read', errno: 'EIO' });
  t.is(await readError(s.m.path('snapshots', 'a', 'image')), 'EIO', 'the read of a saved chunk fails');
  t.true(await s.ffs.fired() > 0, 'the fault fired');
  t.is(await writeChunk(s, 6), null, 'origin writes go on meanwhile');
  await s.ffs.heal();
  await verify(t, s, {});
});

// ---- c. the file system under a growing storage runs out of space ----------------

const GROWING = 'diff_size=1M,diff_threshold=512K,diff_limit=8M,diff_grow=1M,chunk_size=64K';

/** Write `chunks` chunks from `first` on; every write must succeed. */
async function writeChunks(t: ExecutionContext, s: Scene, first: number, chunks: number): Promise<void> {
  for (let c = first; c < first + chunks; c++) t.is(await writeChunk(s, c), null, `write of chunk ${c}`);
}

test('ENOSPC from fallocate while the storage grows: the snapshot overflows (corrupted), origin writes succeed', async (t) => {
  const s = await setUp(t, { options: GROWING, diffOnFaultFs: true });
  await s.ffs.fail({ file: 'disk.diff', op: 'fallocate', errno: 'ENOSPC' });
  await take(s, 'a');
  await writeChunks(t, s, 0, 32); // 2M of copies; the storage has 1M and cannot grow
  t.true(await s.ffs.fired() > 0, 'the fault fired');
  await s.tail.waitType('corrupted', 'a');
  await s.ffs.heal();
  await fsp.rmdir(s.m.path('snapshots', 'a')); // its space comes back
  s.taken.delete('a');
  await take(s, 'b');
  await writeChunks(t, s, 40, 4);
  await verify(t, s, {});
  t.is(s.tail.of('corrupted', 'a').length, 1, 'exactly one corrupted event for a');
  t.is(s.tail.of('corrupted', 'a')[0]?.['error'], 'ENOSPC');
});

test('ENOSPC from writes into grown storage: the snapshot is corrupted, origin writes succeed', async (t) => {
  const s = await setUp(t, { options: GROWING, diffOnFaultFs: true });
  // The storage grows (fallocate succeeds), but its file system cannot back the new space.
  await s.ffs.fail({ file: 'disk.diff', op: 'write', errno: 'ENOSPC', from: 1 * MiB });
  await take(s, 'a');
  t.is(await writeChunk(s, 0), null);
  await take(s, 'b'); // a's chunk 0 is saved in the first megabyte: a never needs the grown space for it
  await writeChunks(t, s, 1, 24); // copies for both a and b, past the first megabyte
  t.true(await s.ffs.fired() > 0, 'the fault fired');
  await verify(t, s, { a: 'ENOSPC', b: 'ENOSPC' });
});

// ---- d. the log's file system is full --------------------------------------------

test('a full log changes nothing: snapshots are taken and destroyed, writes succeed, the daemon stays up', async (t) => {
  const s = await setUp(t, { options: 'diff_size=2M,diff_threshold=1M,chunk_size=64K', logOnFaultFs: true });
  await s.ffs.fail({ file: 'daemon.log', op: 'write', errno: 'ENOSPC' });
  await take(s, 'a');
  t.is(await writeChunk(s, 0), null);
  for (let i = 0; i < 5; i++) {
    await take(s, `tmp${i}`);
    t.is(await writeChunk(s, 1 + i), null);
    await fsp.rmdir(s.m.path('snapshots', `tmp${i}`));
    s.taken.delete(`tmp${i}`);
  }
  t.true(await s.ffs.fired() > 0, 'the log really failed');
  await take(s, 'b');
  await writeChunks(t, s, 8, 20); // past the low-space threshold, with space to spare
  await s.tail.waitType('low-free-space');
  t.deepEqual((await fsp.readdir(s.m.path('snapshots'))).sort(), ['a', 'b'], 'no half-taken or half-destroyed snapshot');
  await verify(t, s, {});
});

test('a full log while the storage grows: growth goes on, nothing is corrupted, the daemon stays up', async (t) => {
  const s = await setUp(t, { options: GROWING, diffOnFaultFs: true, logOnFaultFs: true });
  await s.ffs.fail({ file: 'daemon.log', op: 'write', errno: 'ENOSPC' });
  await take(s, 'a');
  await writeChunks(t, s, 0, 24); // 1.5M of copies: the storage must grow past its first 1M
  t.true(await s.ffs.fired() > 0, 'the log really failed');
  t.true(s.tail.of('storage-grown').length > 0, 'the storage grew');
  await verify(t, s, {});
});
