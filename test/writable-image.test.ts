/**
 * Writable snapshot images on real mounts: raw writes land in that image only (not the
 * origin, not another snapshot) and are marked in the change maps; ext4 in an image is
 * mounted read-write through a loop device (journal replay) while the origin's ext4 is
 * written, and both keep their files; image writes that exhaust the difference storage
 * fail with ENOSPC and leave the snapshot valid; `-o ro` makes images read-only.
 */
import test from 'ava';
import { promises as fsp, constants as fsc } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import {
  KiB, MiB, MOUNT_HELPER, loopDevice, makeImage, mountDevice, mountImage, must, readRange, run, scratchDir, sh, writeRange,
  forceUnmount,
} from './helpers/fixture.js';

const CHUNK = 64 * KiB;
const BS = 64 * KiB;

async function writeAt(path: string, position: number, data: Buffer): Promise<number> {
  const fh = await fsp.open(path, fsc.O_WRONLY);
  try {
    return (await fh.write(data, 0, data.length, position)).bytesWritten;
  } finally {
    await fh.close();
  }
}

function blocksOf(offset: number, length: number): number[] {
  const out: number[] = [];
  for (let b = Math.floor(offset / BS); b <= Math.floor((offset + length - 1) / BS); b++) out.push(b);
  return out;
}

function firstDifference(a: Buffer, b: Buffer): string {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return `first difference at byte ${i} (chunk ${Math.floor(i / CHUNK)})`;
  return a.length === b.length ? 'equal' : `lengths ${a.length} and ${b.length}`;
}

test('raw image writes land in that image only, next to exact old data, and are marked in the change maps', async (t) => {
  const SIZE = 8 * MiB;
  const m = await mountImage(t, { size: SIZE, options: `diff_size=32M,chunk_size=${CHUNK},block_size=${BS}` });
  const originModel = await fsp.readFile(m.origin);
  await fsp.mkdir(m.path('snapshots', 'older'));
  const olderModel = Buffer.from(originModel);
  // Origin writes between the takes: `s` then sees these chunks on the origin and
  // `older` in saved copies; after `s`, more origin writes give `s` saved copies too.
  const between = randomBytes(1536 * KiB);
  await writeRange(m.path('origin'), 2 * MiB, between);
  between.copy(originModel, 2 * MiB);
  await fsp.mkdir(m.path('snapshots', 's'));
  const atTake = Buffer.from(originModel);
  for (const [pos, len] of [[0, 512 * KiB], [4 * MiB, 300 * KiB], [2 * MiB + 100 * KiB, 64 * KiB]] as const) {
    const data = randomBytes(len);
    await writeRange(m.path('origin'), pos, data);
    data.copy(originModel, pos);
  }
  const image = m.path('snapshots', 's', 'image');
  const originMode = (await fsp.stat(m.origin)).mode & 0o777;
  t.is((await fsp.stat(image)).mode & 0o777, originMode, 'the image takes the origin\'s read and write bits');

  // 1 MiB at 126 KiB, 2174 KiB and 4222 KiB (none chunk-aligned), and two blocks straddling a chunk border.
  const writes: Array<[number, number]> = [[126 * KiB, MiB], [2174 * KiB, MiB], [4222 * KiB, MiB], [6 * MiB - 4 * KiB, 8 * KiB]];
  const imageModel = Buffer.from(atTake);
  for (const [pos, len] of writes) {
    const data = randomBytes(len);
    t.is(await writeAt(image, pos, data), len);
    data.copy(imageModel, pos);
    t.true((await readRange(image, pos, len)).equals(data), `the write at ${pos / KiB} KiB reads back`);
  }
  const whole = await fsp.readFile(image);
  t.true(whole.equals(imageModel), `the image is the copy saved at take plus the writes: ${firstDifference(whole, imageModel)}`);
  const originNow = await fsp.readFile(m.path('origin'));
  t.true(originNow.equals(originModel), `the origin is unchanged: ${firstDifference(originNow, originModel)}`);
  t.true((await fsp.readFile(m.path('snapshots', 'older', 'image'))).equals(olderModel), 'the older snapshot is unchanged');

  // The origin's later writes never reach the image's own chunks.
  const later = randomBytes(2 * MiB);
  await writeRange(m.path('origin'), 0, later);
  later.copy(originModel, 0);
  t.true((await fsp.readFile(image)).equals(imageModel));
  t.true((await fsp.readFile(m.path('origin'))).equals(originModel));

  // Change maps: the image's own cbtmap and the next snapshot's.
  const info = await m.info('s');
  const own = await fsp.readFile(m.path('snapshots', 's', 'cbtmap'));
  await fsp.mkdir(m.path('snapshots', 'next'));
  const next = await fsp.readFile(m.path('snapshots', 'next', 'cbtmap'));
  const written = new Set(writes.flatMap(([pos, len]) => blocksOf(pos, len)));
  for (const b of written) {
    t.is(own[b], info['changes_number'] as number, `block ${b} marked in the image's own cbtmap`);
    t.true((next[b] ?? 0) > (info['changes_number'] as number), `block ${b} shows as changed in the next snapshot`);
  }

  // Space: accounted while the snapshot lives, freed with it.
  const status = await m.status();
  const storage = status['diff_storage'] as Record<string, number>;
  const privateChunks = (info['private_chunks'] as number);
  t.true(privateChunks >= 3 * 17 + 2, `private chunks: ${privateChunks}`);
  t.is(storage['private_chunks'], privateChunks);
  t.is(storage['used'], (storage['saved_chunks'] ?? 0) * CHUNK + privateChunks * CHUNK);
  await fsp.rmdir(m.path('snapshots', 's'));
  const after = (await m.status())['diff_storage'] as Record<string, number>;
  t.is(after['private_chunks'], 0);
  t.true((after['used'] ?? 0) <= (storage['used'] ?? 0) - privateChunks * CHUNK);
});

test('image range rules are /origin\'s: ENOSPC at or past the end, cut short across it, size fixed', async (t) => {
  const SIZE = 4 * MiB;
  const m = await mountImage(t, { size: SIZE, options: 'diff_size=16M' });
  await fsp.mkdir(m.path('snapshots', 'r'));
  const image = m.path('snapshots', 'r', 'image');
  const fh = await fsp.open(image, fsc.O_RDWR);
  t.teardown(() => fh.close().catch(() => undefined));
  await t.throwsAsync(() => fh.write(Buffer.alloc(10), 0, 10, SIZE), { code: 'ENOSPC' });
  await t.throwsAsync(() => fh.write(Buffer.alloc(10), 0, 10, SIZE + 4096), { code: 'ENOSPC' });
  t.is((await fh.write(Buffer.alloc(100, 7), 0, 100, SIZE - 40)).bytesWritten, 40, 'a write across the end is cut short');
  t.true((await readRange(image, SIZE - 40, 100)).equals(Buffer.alloc(40, 7)));
  await t.throwsAsync(() => fsp.truncate(image, 0), { code: 'EPERM' });
  t.is((await fsp.stat(image)).size, SIZE);
  // An open image keeps working after rmdir, writes included, until closed.
  await fsp.rmdir(m.path('snapshots', 'r'));
  t.is((await fh.write(Buffer.alloc(10, 9), 0, 10, 0)).bytesWritten, 10);
  const back = Buffer.alloc(10);
  await fh.read(back, 0, 10, 0);
  t.true(back.equals(Buffer.alloc(10, 9)));
  await fh.close();
  t.is(((await m.status())['diff_storage'] as Record<string, number>)['used'], 0, 'freed at the last close');
});

test('ext4 in an image mounted read-write (journal replay) while the origin\'s ext4 is written: each keeps its own files', async (t) => {
  const dir = await scratchDir(t);
  const originFile = join(dir, 'fs.img');
  await makeImage(originFile, 256 * MiB, { sparse: true });
  await must('mkfs.ext4', ['-q', '-F', originFile]);
  const m = await mountImage(t, { origin: originFile, options: 'diff_size=256M,chunk_size=64K' });
  const live = await loopDevice(t, m.path('origin'));
  const liveDir = join(dir, 'live');
  await mountDevice(t, live, liveDir);
  await sh(`for i in $(seq 1 8); do head -c 2M /dev/urandom > ${liveDir}/a$i; done; mkdir ${liveDir}/tree; cp -r ${join(process.cwd(), 'src')} ${liveDir}/tree/; sync -f ${liveDir}`);
  const before = join(dir, 'before.md5');
  await sh(`cd ${liveDir} && find . -type f -exec md5sum {} + | sort -k2 > ${before}`);
  // Taken while mounted and being written: the image's journal needs replaying.
  const writing = sh(`for i in $(seq 1 6); do head -c 1M /dev/urandom > ${liveDir}/w$i; done`);
  await fsp.mkdir(m.path('snapshots', 'snap'));
  await writing;

  const imageDev = await loopDevice(t, m.path('snapshots', 'snap', 'image'));
  t.regex(await must('dumpe2fs', ['-h', imageDev]), /needs_recovery/, 'the image\'s journal has something to replay');
  const imageDir = join(dir, 'image');
  await mountDevice(t, imageDev, imageDir); // read-write: replays the journal into the image
  // Both written at once: the origin's ext4 and the image's.
  await Promise.all([
    sh(`for i in $(seq 1 8); do head -c 1M /dev/urandom > ${liveDir}/b$i; done; head -c 3M /dev/urandom > ${liveDir}/a1; rm ${liveDir}/a2; sync -f ${liveDir}`),
    sh(`mkdir ${imageDir}/restored; for i in $(seq 1 8); do head -c 1M /dev/urandom > ${imageDir}/restored/r$i; done; echo hello > ${imageDir}/a3; rm ${imageDir}/a4; sync -f ${imageDir}`),
  ]);
  const originList = join(dir, 'origin.md5');
  const imageList = join(dir, 'image.md5');
  await sh(`cd ${liveDir} && find . -type f -exec md5sum {} + | sort -k2 > ${originList}`);
  await sh(`cd ${imageDir} && find . -type f -exec md5sum {} + | sort -k2 > ${imageList}`);
  // The image holds what was synced before the take, except what was changed in it.
  await sh(`cd ${imageDir} && grep -v -e ' ./a3$' -e ' ./a4$' ${before} | md5sum -c --quiet`);
  t.is((await fsp.readFile(join(imageDir, 'a3'), 'utf8')), 'hello\n');
  t.false(await fsp.stat(join(liveDir, 'restored')).then(() => true, () => false), 'the origin never sees the image\'s files');
  t.false((await fsp.readFile(join(liveDir, 'a3'))).equals(Buffer.from('hello\n')));
  t.true(await fsp.stat(join(liveDir, 'a4')).then(() => true, () => false), 'a file removed in the image is still on the origin');
  t.false(await fsp.stat(join(imageDir, 'b1')).then(() => true, () => false), 'the image never sees the origin\'s later files');

  // Remount the image: its files are still its own.
  await must('umount', [imageDir]);
  await must('mount', [imageDev, imageDir]);
  await sh(`cd ${imageDir} && md5sum -c --quiet ${imageList}`);
  await sh(`cd ${liveDir} && md5sum -c --quiet ${originList}`);
  await must('umount', [imageDir]);
  t.notRegex(await must('dumpe2fs', ['-h', imageDev]), /needs_recovery/, 'replayed and cleanly unmounted');
  const fsck = await run('e2fsck', ['-fn', imageDev]);
  t.is(fsck.code, 0, `e2fsck of the image after replay and writes: ${fsck.stdout}${fsck.stderr}`);
  await must('umount', [liveDir]);
  const fsckOrigin = await run('e2fsck', ['-fn', live]);
  t.is(fsckOrigin.code, 0, `e2fsck of the origin: ${fsckOrigin.stdout}`);
  const info = await m.info('snap');
  t.is(info['state'], 'ok');
  t.true((info['private_chunks'] as number) > 0);
});

test('image writes that exhaust the storage fail with ENOSPC; the snapshot stays ok and exact, origin writes land', async (t) => {
  const SIZE = 16 * MiB;
  const m = await mountImage(t, { size: SIZE, options: `diff_size=1M,chunk_size=${CHUNK}` }); // 16 slots
  await fsp.mkdir(m.path('snapshots', 's'));
  const model = await fsp.readFile(m.origin);
  const saved = randomBytes(4 * CHUNK);
  await writeRange(m.path('origin'), 0, saved); // 4 saved copies
  const image = m.path('snapshots', 's', 'image');
  const fh = await fsp.open(image, fsc.O_WRONLY);
  t.teardown(() => fh.close().catch(() => undefined));
  const privateChunks = async (): Promise<number | undefined> => ((await m.status())['diff_storage'] as Record<string, number>)['private_chunks'];
  // Chunk by chunk until the storage is full, with one try on the way of a request
  // that needs two new chunks when one is left: it is refused whole.
  let written = 0;
  let error: unknown = null;
  for (let pos = 8 * MiB; pos < SIZE; pos += CHUNK) {
    if (written === 11) {
      await t.throwsAsync(() => fh.write(randomBytes(2 * CHUNK), 0, 2 * CHUNK, pos), { code: 'ENOSPC' });
      t.is(await privateChunks(), 11, 'a refused write keeps no space');
    }
    const data = randomBytes(CHUNK);
    try {
      await fh.write(data, 0, CHUNK, pos);
    } catch (err) {
      error = err;
      break;
    }
    data.copy(model, pos);
    written++;
  }
  t.is(written, 12);
  t.is((error as { code?: string } | null)?.code, 'ENOSPC');
  t.is(await privateChunks(), 12);
  await t.throwsAsync(() => fh.write(Buffer.alloc(10), 0, 10, 7 * MiB), { code: 'ENOSPC' }, 'every further new chunk: ENOSPC');
  // Chunks the image already owns take writes still.
  const again = randomBytes(100);
  await fh.write(again, 0, 100, 8 * MiB + 1000);
  again.copy(model, 8 * MiB + 1000);
  const info = await m.info('s');
  t.is(info['state'], 'ok');
  t.is(info['error'], null);
  t.true((await fsp.readFile(image)).equals(model), 'exact where written and where not');
  // Origin writes land; those to chunks already saved need no space and leave `s` ok.
  const more = randomBytes(4 * CHUNK);
  await writeRange(m.path('origin'), 0, more);
  t.true((await readRange(m.path('origin'), 0, 4 * CHUNK)).equals(more));
  t.is((await m.info('s'))['state'], 'ok');
  t.true((await fsp.readFile(image)).equals(model));
});

test('-o ro: images are read-only too (EROFS, no write bits)', async (t) => {
  const dir = await scratchDir(t);
  const origin = join(dir, 'disk.img');
  await makeImage(origin, 4 * MiB);
  const mnt = join(dir, 'mnt');
  await fsp.mkdir(mnt);
  t.teardown(() => forceUnmount(mnt));
  await must(process.execPath, [MOUNT_HELPER, origin, mnt, '-o', `ro,diff_storage=${dir}/d.diff,diff_size=8M`]);
  await fsp.mkdir(join(mnt, 'snapshots', 'x'));
  const image = join(mnt, 'snapshots', 'x', 'image');
  await t.throwsAsync(() => fsp.open(image, 'r+'), { code: 'EROFS' });
  await t.throwsAsync(() => fsp.open(image, fsc.O_WRONLY), { code: 'EROFS' });
  await t.throwsAsync(() => fsp.truncate(image, 0), { code: 'EROFS' });
  t.is((await fsp.stat(image)).mode & 0o222, 0);
  t.true((await fsp.readFile(image)).equals(await fsp.readFile(origin)));
});
