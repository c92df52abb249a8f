/**
 * The engine on plain files when something around it fails (issue 9): a log that
 * throws, event observers that throw, a copy that fails while another copy of the same
 * write is still in flight, an image read whose pieces fail at different times, and the
 * engine's own life cycle and reference counts. Faults are injected by wrapping the
 * origin's and the storage's methods; the slow ones open the race windows.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { KiB, MiB } from './helpers/fixture.js';
import { openEngine, readImage, readOrigin } from './helpers/engine-fixture.js';
import { BlksnapError } from '../src/errors.js';
import { StorageGrowth } from '../src/storage/storage-growth.js';
import type { SnapshotEngine } from '../src/engine/engine.js';
import type { Logger } from '../src/engine/logger.js';
import { ChunkCopies } from '../src/engine/chunk-copy.js';
import { DiffStorageExceptions } from '../src/engine/exception-store.js';
import { AlignedBufferPool } from '../src/storage/aligned.js';

const CHUNK = 64 * KiB;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function write(engine: SnapshotEngine, position: number, data: Buffer): Promise<void> {
  await engine.writeOrigin(data, 0, data.length, position);
}

/** What pino's synchronous destination did when its file system was full. */
const fullLog = (): never => {
  throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
};
const throwingLogger: Logger = { debug: fullLog, info: fullLog, warn: fullLog, error: fullLog };

function eventTypes(engine: SnapshotEngine): string[] {
  const types: string[] = [];
  for (let s = engine.events.oldestSeq; s < engine.events.headSeq; s++) types.push(engine.events.get(s)?.type ?? '?');
  return types;
}

// ---- defect 1: a log or an observer that throws ---------------------------------

test('a log that throws on every call costs nothing: take, overflow, destroy and release all complete', async (t) => {
  const { engine } = await openEngine(t, { size: 1 * MiB, chunkSize: CHUNK, diffSize: 4 * CHUNK, logger: throwingLogger });
  const snap = await engine.take('a');
  t.is(engine.get('a'), snap);
  const data = randomBytes(8 * CHUNK);
  await write(engine, 0, data); // 8 chunks to save, room for 4: overflow
  t.true((await readOrigin(engine)).subarray(0, data.length).equals(data), 'every origin write landed');
  t.is(snap.state, 'corrupted');
  t.is(snap.error, 'ENOSPC');
  engine.destroy('a');
  t.is(engine.get('a'), undefined);
  t.is(engine.storage.stats().used, 0, 'the space was freed at destroy');
  t.deepEqual(eventTypes(engine), ['snapshot-taken', 'corrupted', 'snapshot-destroyed']);
});

test('event observers that throw never fail an origin write, a take or a low-space crossing', async (t) => {
  const { engine } = await openEngine(t, { size: 1 * MiB, chunkSize: CHUNK, diffSize: 4 * CHUNK, threshold: 2 * CHUNK });
  engine.events.onEvent = fullLog;
  const v0 = await readOrigin(engine);
  await engine.take('s');
  await write(engine, 0, randomBytes(3 * CHUNK)); // the 3rd copy crosses the threshold
  t.is(engine.get('s')?.state, 'ok');
  t.true((await readImage(engine, 's')).equals(v0));
  await sleep(0);
  t.deepEqual(eventTypes(engine), ['snapshot-taken', 'low-free-space']);
});

test('diff_limit: a growth whose reports throw never rejects; the copy that needed the space corrupts its snapshot, the write lands', async (t) => {
  const { engine } = await openEngine(t, { size: 1 * MiB, chunkSize: CHUNK, diffSize: CHUNK, threshold: CHUNK });
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown): void => void unhandled.push(reason);
  process.on('unhandledRejection', onUnhandled);
  t.teardown(() => void process.off('unhandledRejection', onUnhandled));
  const growth = new StorageGrowth(engine.storage, 1 * MiB, CHUNK);
  engine.storage.manager = growth;
  growth.onGrown = ({ file, bytes, total }) => engine.events.emit('storage-grown', { path: file.path, bytes, total });
  growth.onError = fullLog;
  // The file system under the storage is full: every growth step fails.
  engine.storage.extend = () => Promise.reject(BlksnapError.of('ENOSPC', 'no space left on device'));
  const snap = await engine.take('s');
  // From here on the log and the event observer throw, as a full log did.
  engine.events.onEvent = fullLog;
  const data = randomBytes(2 * CHUNK);
  await write(engine, 0, data); // the first copy takes the only slot; the second finds none
  t.true((await readOrigin(engine)).subarray(0, data.length).equals(data));
  t.is(snap.state, 'corrupted');
  t.is(snap.error, 'ENOSPC');
  await sleep(50);
  t.deepEqual(unhandled, [], 'no unhandled rejection');
});

// ---- defect 2: a failed copy and a copy still in flight ---------------------------

test('a copy that fails while another copy of the same write is in flight: a snapshot taken next never reads new data', async (t) => {
  // The log throws from its error() call, as a full log did: that made the failed
  // copy reject, and Promise.all let its write leave the take barrier at once.
  const logger: Logger = { ...throwingLogger, info: () => undefined, debug: () => undefined, warn: () => undefined };
  const { engine } = await openEngine(t, { size: 1 * MiB, chunkSize: CHUNK, diffSize: 2 * MiB, logger });
  const s1 = await engine.take('s1');
  // Chunk 1 saved already: the write below copies chunks 0 (A) and 2 (B) as two runs.
  await write(engine, CHUNK, randomBytes(CHUNK));
  const origin = engine.origin;
  const plainRead = origin.read.bind(origin);
  let failedA!: () => void;
  const aFailed = new Promise<void>((r) => (failedA = r));
  let slowB = true;
  origin.read = async (buf, offset, length, position) => {
    if (position === 0 && length === CHUNK) {
      failedA();
      throw BlksnapError.of('EIO', 'injected: origin read error in chunk A');
    }
    if (position === 2 * CHUNK && slowB) {
      slowB = false;
      await sleep(150); // chunk B's copy stays in flight
    }
    return plainRead(buf, offset, length, position);
  };
  const w1Data = randomBytes(3 * CHUNK);
  const w1 = write(engine, 0, w1Data).then(() => 'landed', (err: unknown) => err);
  await aFailed;
  await sleep(5);
  await engine.take('s2'); // must wait for w1, whose copy of B is still in flight
  const atTake = (await readOrigin(engine)).subarray(2 * CHUNK, 3 * CHUNK);
  await write(engine, 2 * CHUNK, randomBytes(CHUNK)); // chunk B again, now for s2
  const s2 = engine.get('s2');
  t.is(s2?.state, 'ok');
  t.true((await readImage(engine, 's2', 2 * CHUNK, CHUNK)).equals(atTake), 's2 holds chunk B as it was at its take');
  t.is(await w1, 'landed', 'the origin write whose copy failed still landed');
  t.is(s1.state, 'corrupted');
  t.is(s1.error, 'EIO');
});

// ---- defect 3: an image read whose pieces fail at different times -----------------

test('an image read answers only when every run has settled, even when one fails early', async (t) => {
  const { engine } = await openEngine(t, { size: 1 * MiB, chunkSize: CHUNK, diffSize: 2 * MiB });
  const snap = await engine.take('s');
  await write(engine, CHUNK, randomBytes(CHUNK)); // chunk 1 saved: a read of 0..1 is two runs
  const origin = engine.origin;
  origin.read = () => Promise.reject(BlksnapError.of('EIO', 'injected: origin read error in chunk 0'));
  const storage = engine.storage;
  const plainRead = storage.readChunkPart.bind(storage);
  let slowDone = false;
  storage.readChunkPart = async (slot, offset, length, buf) => {
    await sleep(100);
    await plainRead(slot, offset, length, buf);
    slowDone = true;
  };
  const buf = Buffer.alloc(2 * CHUNK, 0x55);
  const err = await t.throwsAsync(() => engine.readImage(snap, buf, 0, buf.length, 0));
  t.is((err as BlksnapError | undefined)?.code, 'EIO');
  t.true(slowDone, 'the other run had finished before the read answered');
  const answered = Buffer.from(buf);
  await sleep(200);
  t.true(buf.equals(answered), 'nothing wrote into the buffer after the answer');
});

// ---- life cycle and references ---------------------------------------------------

test('after close every operation fails with ESHUTDOWN; close waits for the writes in flight', async (t) => {
  const { engine } = await openEngine(t, { size: 1 * MiB, chunkSize: CHUNK, diffSize: 2 * MiB });
  const snap = await engine.take('s');
  const origin = engine.origin;
  const plainWrite = origin.write.bind(origin);
  let landed = false;
  origin.write = async (buf, offset, length, position) => {
    await sleep(50);
    await plainWrite(buf, offset, length, position);
    landed = true;
  };
  const inFlight = write(engine, 0, randomBytes(CHUNK));
  await sleep(5);
  t.is(engine.status, 'open');
  const closing = engine.close();
  t.is(engine.status, 'closing');
  const shut = { code: 'ESHUTDOWN' };
  await t.throwsAsync(() => write(engine, CHUNK, randomBytes(10)), shut);
  await t.throwsAsync(() => engine.take('later'), shut);
  await inFlight;
  t.true(landed, 'the write in flight finished');
  await closing;
  t.is(engine.status, 'closed');
  await t.throwsAsync(() => engine.readImage(snap, Buffer.alloc(10), 0, 10, 0), shut);
  await t.throwsAsync(() => readOrigin(engine), shut);
  t.throws(() => engine.destroy('s'), shut);
  t.throws(() => engine.markDirty(0, 10), shut);
  await engine.close(); // a second close is the same close
});

test('a double release changes nothing: a later holder keeps its snapshot and its data', async (t) => {
  const { engine } = await openEngine(t, { size: 1 * MiB, chunkSize: CHUNK, diffSize: 2 * MiB });
  const v0 = await readOrigin(engine);
  const snap = await engine.take('x');
  engine.acquire(snap); // a first open file
  engine.release(snap);
  engine.release(snap); // released twice (a bug somewhere): must not go below zero
  t.is(snap.refs, 0);
  engine.acquire(snap); // a second open file
  engine.destroy('x'); // the name goes; the open file keeps the data
  await write(engine, 0, randomBytes(MiB));
  const buf = Buffer.alloc(MiB);
  await engine.readImage(snap, buf, 0, MiB, 0);
  t.true(buf.equals(v0), 'still the point in time');
  t.true(engine.storage.stats().used > 0);
  engine.release(snap);
  t.is(engine.storage.stats().used, 0, 'freed at the last real release');
  t.throws(() => engine.acquire(snap), { code: 'ENOENT' }, 'a released snapshot cannot be held again');
});

test('chunk copies: a write for a newer snapshot never joins a copy in flight for an older one; it looks again', async (t) => {
  // The take barrier keeps this from happening in the engine; the state machine must
  // not rely on that alone. Driven directly: two writes to one chunk, the first seeing
  // snapshot 1 as the newest, the second snapshot 2, while the first copy is in flight.
  const { engine } = await openEngine(t, { size: 1 * MiB, chunkSize: CHUNK, diffSize: 2 * MiB });
  const origin = engine.origin;
  const plainRead = origin.read.bind(origin);
  origin.read = async (buf, offset, length, position) => {
    await sleep(50);
    return plainRead(buf, offset, length, position);
  };
  const failures: string[] = [];
  const copies = new ChunkCopies({
    origin,
    store: new DiffStorageExceptions(engine.storage),
    chunkSize: CHUNK,
    originSize: engine.originSize,
    pool: new AlignedBufferPool(CHUNK, 4),
    slotReused: () => undefined,
    needed: () => true,
    ownedByAll: () => false,
    failed: (lo, hi, err) => void failures.push(`(${lo}, ${hi}]: ${String(err)}`),
  });
  const forOne = copies.prepareWrite(0, 0, 1);
  t.is(copies.copying, 1);
  const forTwo = copies.prepareWrite(0, 0, 2);
  await Promise.all([forOne, forTwo]);
  t.deepEqual(failures, []);
  const one = copies.savedSlot(0, 1);
  const two = copies.savedSlot(0, 2);
  t.true(one >= 0, 'snapshot 1 has its copy');
  t.true(two >= 0 && two !== one, 'snapshot 2 got a copy of its own, made after the first settled');
  t.is(copies.copying, 0);
  t.is(copies.prepareWrite(0, 0, 2), null, 'saved through 2: nothing more to do');
});
