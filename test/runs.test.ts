/**
 * Copy runs and image reads in runs through real mounts (issue 17): 1 MiB and 8 MiB
 * O_DIRECT first writes at offsets that are not chunk-aligned, over a difference storage
 * made of several appended files that also grows by itself in between; a take racing an
 * 8 MiB write; and image reads checked byte for byte against a model over random
 * mixtures of saved, origin, private and zero chunks, O_DIRECT and buffered, at
 * unaligned offsets.
 */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { execFileP, KiB, MiB, mountImage, must, readRange, writeRange, type Mounted } from './helpers/fixture.js';
import { seededFloats } from './helpers/seeded-random.js';

const CHUNK = 64 * KiB;


/** Bytes that name where they were written: `tag` and the offset, every 16 bytes. */
function stamped(tag: number, position: number, length: number): Buffer {
  const b = Buffer.alloc(Math.ceil(length / 16) * 16);
  for (let i = 0; i < length; i += 16) {
    b.writeUInt32LE(tag, i);
    b.writeDoubleLE(position + i, i + 4);
    b.writeUInt32LE(0x5eed ^ tag, i + 12);
  }
  return b.subarray(0, length);
}

/** One write(2) of `data` at `position` with O_DIRECT (dd: aligned buffer, one request of the whole size). */
async function writeDirect(m: Mounted, position: number, data: Buffer): Promise<void> {
  const src = join(m.dir, `write-${position}-${data.length}.bin`);
  await fsp.writeFile(src, data);
  await must('dd', [`if=${src}`, `of=${m.path('origin')}`, `bs=${data.length}`, 'count=1', `seek=${position}`, 'oflag=direct,seek_bytes', 'conv=notrunc', 'status=none']);
  await fsp.rm(src);
}

/** One O_DIRECT read (dd: aligned buffer) of an image. */
async function readDirect(path: string, position: number, length: number): Promise<Buffer> {
  const r = await execFileP('dd', [`if=${path}`, `bs=${length}`, 'count=1', `skip=${position}`, 'iflag=direct,skip_bytes,fullblock', 'status=none'], { encoding: 'buffer', maxBuffer: length + 4096 });
  return r.stdout;
}

async function control(m: Mounted, line: string): Promise<void> {
  await fsp.writeFile(m.path('control'), `${line}\n`);
}

interface StorageStatus {
  files: Array<{ path: string; size: number; slots: number }>;
  size: number;
  used: number;
  saved_chunks: number;
  private_chunks: number;
}

async function storage(m: Mounted): Promise<StorageStatus> {
  return (await m.status())['diff_storage'] as StorageStatus;
}

test('1 MiB and 8 MiB first writes across chunk and storage-file boundaries, storage appended and grown in between: every image is its point in time', async (t) => {
  const size = 40 * MiB;
  // 1 MiB of storage to start with, growth in 25-chunk steps, and files appended by hand.
  const m = await mountImage(t, { size, options: 'diff_size=1M,diff_threshold=512K,diff_limit=64M,diff_grow=1600K,chunk_size=64K' });
  const taken = new Map<string, Buffer>();
  const take = async (name: string): Promise<void> => {
    taken.set(name, await fsp.readFile(m.origin));
    await fsp.mkdir(m.path('snapshots', name));
  };
  const rand = seededFloats(17);
  let tag = 1;
  // Offsets 4 KiB past a chunk border: every write straddles chunks at both ends.
  const offset = (): number => (Math.floor(rand() * (size / CHUNK - 130)) * CHUNK) + 4 * KiB * (1 + Math.floor(rand() * 15));
  await take('s1');
  await writeDirect(m, 3 * CHUNK + 4 * KiB, stamped(tag++, 3 * CHUNK + 4 * KiB, MiB)); // 17 chunks: past the first file's 16 slots
  await control(m, `storage-append ${join(m.dir, 'extra1.diff')} ${3 * CHUNK + 17 * CHUNK}`);
  for (let i = 0; i < 4; i++) {
    const at = offset();
    await writeDirect(m, at, stamped(tag++, at, MiB));
  }
  await take('s2');
  await control(m, `storage-append ${join(m.dir, 'extra2.diff')} ${1 * MiB + 5 * CHUNK}`);
  for (let i = 0; i < 3; i++) {
    const at = offset();
    await writeDirect(m, at, stamped(tag++, at, 8 * MiB));
  }
  await take('s3');
  for (let i = 0; i < 3; i++) {
    const at = offset();
    await writeDirect(m, at, stamped(tag++, at, i === 1 ? MiB : 8 * MiB));
  }
  const st = await storage(m);
  t.true(st.files.length >= 3, `several files: ${st.files.map((f) => f.path).join(', ')}`);
  t.true(st.size > 1 * MiB + 20 * CHUNK + 1 * MiB + 5 * CHUNK, `the storage grew by itself too (${st.size} bytes)`);
  t.is(st.private_chunks, 0);
  t.is(st.used, st.saved_chunks * CHUNK, 'every slot in use holds a saved chunk');
  for (const [name, copy] of taken) {
    const info = await m.info(name);
    t.is(info['state'], 'ok', `${name} ok`);
    t.true((await readRange(m.path('snapshots', name, 'image'), 0, size)).equals(copy), `${name} is its point in time`);
  }
  t.true((await readRange(m.path('origin'), 0, size)).equals(await fsp.readFile(m.origin)));
  // Destroying the middle snapshot frees what only it needed; the others stay exact.
  await fsp.rmdir(m.path('snapshots', 's2'));
  taken.delete('s2');
  const after = await storage(m);
  t.is(after.used, after.saved_chunks * CHUNK);
  t.true(after.saved_chunks < st.saved_chunks);
  for (const [name, copy] of taken) t.true((await readRange(m.path('snapshots', name, 'image'), 0, size)).equals(copy), `${name} still exact`);
});

test('a take racing an 8 MiB O_DIRECT write sees each of its 1 MiB requests wholly or not at all', async (t) => {
  const size = 24 * MiB;
  const m = await mountImage(t, { size, options: 'diff_size=48M,chunk_size=64K' });
  for (let round = 0; round < 4; round++) {
    const before = await fsp.readFile(m.origin);
    const at = 2 * MiB + round * CHUNK + 4 * KiB;
    const data = stamped(round + 1, at, 8 * MiB);
    let done = false;
    const writing = writeDirect(m, at, data).then(() => void (done = true));
    // Take once the write's first request has landed on the origin (or the write is over).
    const head = data.subarray(0, 16);
    const landed = async (): Promise<boolean> => (await readRange(m.origin, at, 16)).equals(head);
    while (!done && !(await landed())) await new Promise((r) => setImmediate(r));
    await fsp.mkdir(m.path('snapshots', `r${round}`));
    await writing;
    const image = await readRange(m.path('snapshots', `r${round}`, 'image'), 0, size);
    t.true(image.subarray(0, at).equals(before.subarray(0, at)), 'nothing before the write changed');
    t.true(image.subarray(at + data.length).equals(before.subarray(at + data.length)), 'nothing after it changed');
    // The kernel cuts the write into requests of at most 1 MiB from its start.
    for (let r = 0; r < 8; r++) {
      const piece = image.subarray(at + r * MiB, at + (r + 1) * MiB);
      const old = before.subarray(at + r * MiB, at + (r + 1) * MiB);
      const fresh = data.subarray(r * MiB, (r + 1) * MiB);
      t.true(piece.equals(old) || piece.equals(fresh), `round ${round}, request ${r}: old or new, never a mix`);
    }
  }
});

test('image reads are byte-exact against a model: saved, origin, private and zero chunks at random, O_DIRECT and buffered, unaligned', async (t) => {
  const size = 16 * MiB;
  const rand = seededFloats(5);
  // An origin with zero chunks among random ones.
  const dir = await fsp.mkdtemp(join('/var/tmp', 'blksnapfs-runs-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  const originPath = join(dir, 'disk.img');
  const content = stamped(999, 0, size);
  for (let c = 0; c < size / CHUNK; c++) if (rand() < 0.2) content.fill(0, c * CHUNK, (c + 1) * CHUNK);
  await fsp.writeFile(originPath, content);
  const m = await mountImage(t, { origin: originPath, options: 'diff_size=64M,chunk_size=64K' });
  const models = new Map<string, Buffer>();
  let tag = 1;
  const originWrite = async (): Promise<void> => {
    const kind = rand();
    if (kind < 0.3) {
      // A run: 1 MiB O_DIRECT at a chunk border or 4 KiB past one.
      const at = Math.floor(rand() * (size / CHUNK - 17)) * CHUNK + (rand() < 0.5 ? 0 : 4 * KiB);
      await writeDirect(m, at, stamped(tag++, at, MiB));
    } else if (kind < 0.6) {
      // Every other chunk of a stretch (the bench's half-saved image).
      const first = Math.floor(rand() * (size / CHUNK - 40));
      for (let c = first; c < first + 32; c += 2) await writeRange(m.path('origin'), c * CHUNK, stamped(tag++, c * CHUNK, CHUNK));
    } else {
      const at = Math.floor(rand() * (size - 20 * KiB));
      await writeRange(m.path('origin'), at, rand() < 0.3 ? Buffer.alloc(8 * KiB) : stamped(tag++, at, 1 + Math.floor(rand() * 20 * KiB)));
    }
  };
  const imageWrite = async (name: string): Promise<void> => {
    const model = models.get(name);
    if (model === undefined) throw new Error(`no model for ${name}`);
    const at = Math.floor(rand() * (size - 300 * KiB));
    const data = rand() < 0.2 ? Buffer.alloc(1 + Math.floor(rand() * 70 * KiB)) : stamped(tag++, at, 1 + Math.floor(rand() * 300 * KiB));
    await writeRange(m.path('snapshots', name, 'image'), at, data);
    data.copy(model, at);
  };
  for (const name of ['a', 'b']) {
    models.set(name, await fsp.readFile(originPath));
    await fsp.mkdir(m.path('snapshots', name));
    for (let i = 0; i < 25; i++) await originWrite();
    for (let i = 0; i < 12; i++) await imageWrite(name);
  }
  for (let i = 0; i < 10; i++) await originWrite();
  for (let i = 0; i < 6; i++) await imageWrite('a');
  const st = await storage(m);
  t.true(st.saved_chunks > 100 && st.private_chunks > 20, `a mixture: ${st.saved_chunks} saved, ${st.private_chunks} private`);
  for (const [name, model] of models) {
    const image = m.path('snapshots', name, 'image');
    const wrong: string[] = [];
    for (let i = 0; i < 120; i++) {
      const direct = i % 2 === 0;
      const length = direct ? 4 * KiB * (1 + Math.floor(rand() * 512)) : 1 + Math.floor(rand() * 2 * MiB);
      const at = direct ? 4 * KiB * Math.floor(rand() * ((size - length) / (4 * KiB))) : Math.floor(rand() * (size - length));
      const got = direct ? await readDirect(image, at, length) : await readRange(image, at, length);
      if (!got.equals(model.subarray(at, at + length))) wrong.push(`${direct ? 'O_DIRECT' : 'buffered'} ${length} bytes at ${at}`);
    }
    t.deepEqual(wrong, [], `${name}: every read equals the model`);
    // Sequential 1 MiB O_DIRECT reads of the whole image (the read-ahead's case).
    const chunks: Buffer[] = [];
    for (let at = 0; at < size; at += MiB) chunks.push(await readDirect(image, at, MiB));
    t.true(Buffer.concat(chunks).equals(model), `${name}: a sequential read equals the model`);
    t.is((await m.info(name))['state'], 'ok');
  }
});
