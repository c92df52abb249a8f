/**
 * Thin and sparse end to end, on real mounts with the real tools: SEEK_DATA/SEEK_HOLE on
 * /origin and on images, cp --sparse=always, tar -S and `blksnapfs backup` that read
 * only the data through the daemon, fallocate -p/-z on /origin and on an image, ext4 on
 * a loop device over /origin whose fstrim gives space back, and a race of seeks and
 * reads of an image against first writes and punches of the origin.
 */
import test from 'ava';
import { randomBytes, randomInt } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, fallocateModeAsync, seekAsync } from '../src/storage/native.js';
import {
  CLI, KiB, MiB, daemonPids, loopDevice, makeImage, mountDevice, mountImage, must, readRange, run, scratchDir, sh, writeRange, type Mounted,
} from './helpers/fixture.js';

const GiB = 1024 * MiB;

/** The data runs of a file, as SEEK_DATA/SEEK_HOLE walk them (lseek(2) on the file). */
async function dataRuns(path: string): Promise<Array<[number, number]>> {
  const fh = await fsp.open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    const runs: Array<[number, number]> = [];
    for (let pos = 0; pos < size;) {
      const data = await seekAsync(fh.fd, pos, 'data');
      if (data === null) break;
      const hole = (await seekAsync(fh.fd, data, 'hole')) ?? size;
      runs.push([data, hole]);
      pos = hole;
    }
    return runs;
  } finally {
    await fh.close();
  }
}

/** Bytes the daemon has read with read(2)-like calls so far (/proc/PID/io rchar): the origin, the difference storage, requests. */
async function daemonReadBytes(m: Mounted): Promise<number> {
  const pids = await daemonPids(m.mnt);
  if (pids.length === 0) throw new Error(`no daemon for ${m.mnt}`);
  let total = 0;
  for (const pid of pids) {
    const io = await fsp.readFile(`/proc/${pid}/io`, 'utf8');
    total += Number(/^rchar: (\d+)$/m.exec(io)?.[1] ?? NaN);
  }
  return total;
}

/** Bytes the daemon reads while `work` runs. */
async function readByDaemon(m: Mounted, work: () => Promise<unknown>): Promise<number> {
  const before = await daemonReadBytes(m);
  await work();
  return (await daemonReadBytes(m)) - before;
}

/**
 * sha256 of a whole file, read in 4 MiB requests (cmp reads by st_blksize, 4 KiB: a
 * quarter of a million requests for a 1 GiB image).
 */
async function digest(path: string): Promise<string> {
  return (await sh(`dd if='${path}' bs=4M status=none | sha256sum`)).split(' ')[0] ?? '';
}

/** A sparse origin of `size` with random data at each offset (`length` bytes each), written before any mount. */
async function sparseOrigin(dir: string, size: number, extents: Array<[number, number]>): Promise<string> {
  const origin = join(dir, 'sparse.img');
  await makeImage(origin, size, { sparse: true });
  for (const [offset, length] of extents) await writeRange(origin, offset, randomBytes(length));
  return origin;
}

test('SEEK_DATA/SEEK_HOLE on /origin and on images of a sparse 1 GiB origin: its extents are data, a later write shows on the origin only', async (t) => {
  const dir = await scratchDir(t);
  const extents: Array<[number, number]> = [[100 * MiB, MiB], [400 * MiB, MiB], [900 * MiB, MiB]];
  const origin = await sparseOrigin(dir, GiB, extents);
  const m = await mountImage(t, { origin });
  const want = extents.map(([o, l]): [number, number] => [o, o + l]);
  t.deepEqual(await dataRuns(m.path('origin')), want);
  await fsp.mkdir(m.path('snapshots', 's'));
  const image = m.path('snapshots', 's', 'image');
  t.deepEqual(await dataRuns(image), want);
  for (const path of [m.path('origin'), image]) {
    const st = await fsp.stat(path);
    t.true(st.blocks > 0 && st.blocks * 512 < 8 * MiB, `st_blocks of ${path} shows the holes (${st.blocks})`);
  }

  // A first write into a hole: data on the origin, still a hole reading zeros on the image,
  // and the chunk it copied is a hole record, not a slot.
  await writeRange(m.path('origin'), 500 * MiB + 8 * KiB, randomBytes(4 * KiB));
  t.deepEqual(await dataRuns(m.path('origin')), [want[0], want[1], [500 * MiB + 8 * KiB, 500 * MiB + 12 * KiB], want[2]]);
  t.deepEqual(await dataRuns(image), want);
  t.true((await readRange(image, 500 * MiB, MiB)).equals(Buffer.alloc(MiB)));
  const storage = (await m.status())['diff_storage'] as Record<string, number>;
  t.like(storage, { saved_chunks: 0, hole_chunks: 1, used: 0 });

  // At or past the end: ENXIO; a file without holes (status) is all data.
  const fh = await fsp.open(image, 'r');
  t.teardown(() => fh.close());
  t.is(await seekAsync(fh.fd, GiB, 'data'), null);
  t.is(await seekAsync(fh.fd, GiB, 'hole'), null);
  const status = await fsp.readFile(m.path('status'));
  const runs = await dataRuns(m.path('status'));
  t.is(runs.length, 1);
  t.is(runs[0]?.[0], 0);
  t.true((runs[0]?.[1] ?? 0) >= status.length - 256, 'the whole of /status is data');
});

test('cp --sparse=always, tar -S and blksnapfs backup (full, incremental) of an image of a 1 GiB origin with 4 MiB of data read only the data through the daemon', async (t) => {
  const dir = await scratchDir(t);
  const origin = await sparseOrigin(dir, GiB, [[0, MiB], [300 * MiB, MiB], [700 * MiB, MiB], [GiB - MiB, MiB]]);
  const m = await mountImage(t, { origin, options: 'diff_size=128M' });
  await fsp.mkdir(m.path('snapshots', 's1'));
  const image = m.path('snapshots', 's1', 'image');
  const limit = 64 * MiB;

  const copy = join(dir, 'copy.img');
  const cpBytes = await readByDaemon(m, () => must('cp', ['--sparse=always', image, copy]));
  t.log(`cp --sparse=always: the daemon read ${cpBytes} bytes`);
  t.true(cpBytes <= limit, `cp: the daemon read ${cpBytes} bytes`);
  const imageSum = await digest(image);
  t.is(await digest(copy), imageSum, 'cp: the same bytes');
  t.true((await fsp.stat(copy)).blocks * 512 <= 8 * MiB, 'the copy is sparse');

  const tarFile = join(dir, 'image.tar');
  const tarBytes = await readByDaemon(m, () => must('tar', ['-S', '-cf', tarFile, '-C', join(m.mnt, 'snapshots', 's1'), 'image']));
  t.log(`tar -S: the daemon read ${tarBytes} bytes`);
  t.true(tarBytes <= limit, `tar -S: the daemon read ${tarBytes} bytes`);
  const untar = join(dir, 'untar');
  await fsp.mkdir(untar);
  await must('tar', ['-xSf', tarFile, '-C', untar]);
  t.is(await digest(join(untar, 'image')), imageSum, 'tar: the same bytes');

  const target = join(dir, 'backup.img');
  const backup = async (name: string, since: boolean): Promise<Record<string, number | string>> => {
    const out = await must(process.execPath, [CLI, 'backup', m.mnt, name, target, '--json', ...(since ? ['--since-manifest', `${target}.manifest.json`] : [])]);
    return JSON.parse(out.trim().split('\n').pop() ?? '{}') as Record<string, number | string>;
  };
  let full: Record<string, number | string> = {};
  const fullBytes = await readByDaemon(m, async () => (full = await backup('s1', false)));
  t.log(`backup (full): the daemon read ${fullBytes} bytes`);
  t.true(fullBytes <= limit, `full backup: the daemon read ${fullBytes} bytes`);
  t.like(full, { kind: 'full', read_bytes: 4 * MiB, hole_bytes: GiB - 4 * MiB });
  t.is(await digest(target), imageSum, 'full backup: the same bytes');
  const manifestBytes = (await fsp.stat(`${target}.manifest.json`)).size;
  t.log(`manifest of a 1 GiB image: ${manifestBytes} bytes`);
  t.true(manifestBytes <= 100 * 1000, `manifest ${manifestBytes} bytes for 1 GiB`);
  await must(process.execPath, [CLI, 'verify-backup', `${target}.manifest.json`]);
  t.deepEqual((await fsp.readdir(dir)).filter((f) => f.startsWith('backup.img')).sort(), ['backup.img', 'backup.img.manifest.json']);

  // Incremental: data into a hole, and a punch of data (which becomes a hole in the backup).
  await writeRange(m.path('origin'), 500 * MiB, randomBytes(MiB));
  await must('fallocate', ['-p', '-o', String(300 * MiB), '-l', String(MiB), m.path('origin')]);
  await fsp.mkdir(m.path('snapshots', 's2'));
  let inc: Record<string, number | string> = {};
  const incBytes = await readByDaemon(m, async () => (inc = await backup('s2', true)));
  t.log(`backup (incremental): the daemon read ${incBytes} bytes`);
  t.true(incBytes <= limit, `incremental backup: the daemon read ${incBytes} bytes`);
  t.like(inc, { kind: 'incremental', read_bytes: MiB, hole_bytes: MiB });
  t.is(await digest(target), await digest(m.path('snapshots', 's2', 'image')), 'incremental backup: the same bytes');
  t.false((await dataRuns(target)).some(([from, to]) => from < 301 * MiB && to > 300 * MiB), 'the punched range is a hole in the backup');
  await must(process.execPath, [CLI, 'verify-backup', `${target}.manifest.json`]);
});

test('fallocate -p and -z on /origin under a snapshot: zeros on the origin, old bytes in the image, blocks marked, the origin file shrinks', async (t) => {
  const m = await mountImage(t, { size: 64 * MiB, options: 'diff_size=64M,block_size=64K' });
  await fsp.mkdir(m.path('snapshots', 's1'));
  const image = m.path('snapshots', 's1', 'image');
  const old = await readRange(image, 0, 64 * MiB);
  const before = (await fsp.stat(m.origin)).blocks * 512;

  await must('fallocate', ['-p', '-o', String(8 * MiB), '-l', String(8 * MiB), m.path('origin')]);
  await must('fallocate', ['-z', '-o', String(20 * MiB), '-l', String(MiB), m.path('origin')]);
  const now = await readRange(m.path('origin'), 0, 64 * MiB);
  t.true(now.subarray(8 * MiB, 16 * MiB).equals(Buffer.alloc(8 * MiB)));
  t.true(now.subarray(20 * MiB, 21 * MiB).equals(Buffer.alloc(MiB)));
  t.true(now.subarray(16 * MiB, 20 * MiB).equals(old.subarray(16 * MiB, 20 * MiB)), 'nothing else changed');
  t.true((await readRange(image, 0, 64 * MiB)).equals(old), 'the image keeps the old bytes');
  const after = (await fsp.stat(m.origin)).blocks * 512;
  t.true(after <= before - 8 * MiB + 64 * KiB, `the origin file shrank by the punch: ${before} -> ${after}`);
  t.deepEqual((await dataRuns(m.path('origin'))).filter(([from, to]) => from < 16 * MiB && to > 8 * MiB), [], 'a hole on /origin');

  // Change tracking: the punched and zeroed blocks are in the next snapshot's map.
  await fsp.mkdir(m.path('snapshots', 's2'));
  // The punches are the mount's own writes, not writes from outside: s1 stays valid and
  // change tracking goes on in the same generation.
  t.like(await m.info('s1'), { state: 'ok' });
  t.is((await m.info('s2'))['generation_id'], (await m.info('s1'))['generation_id']);
  const s1 = (await m.info('s1'))['changes_number'] as number;
  const map = await fsp.readFile(m.path('snapshots', 's2', 'cbtmap'));
  const block = 64 * KiB;
  for (const [from, to] of [[8 * MiB, 16 * MiB], [20 * MiB, 21 * MiB]] as const) {
    for (let b = from / block; b < to / block; b++) t.true((map[b] ?? 0) > s1, `block ${b} marked`);
  }
  t.true((map[40 * MiB / block] ?? 0) <= s1, 'an untouched block is not');

  // On an image: zeros written to its private copies; the origin and other snapshots unchanged.
  await must('fallocate', ['-p', '-o', String(MiB), '-l', String(128 * KiB), image]);
  t.true((await readRange(image, MiB, 128 * KiB)).equals(Buffer.alloc(128 * KiB)));
  t.true((await readRange(m.path('origin'), MiB, 128 * KiB)).equals(old.subarray(MiB, MiB + 128 * KiB)));
  t.like(await m.info('s1'), { private_chunks: 2 });
  t.true((await readRange(m.path('snapshots', 's2', 'image'), MiB, 128 * KiB)).equals(old.subarray(MiB, MiB + 128 * KiB)));

  // Other modes, and ranges that start past the end: refused, nothing changed.
  const plain = await run('fallocate', ['-o', '0', '-l', '4096', m.path('origin')]);
  t.not(plain.code, 0);
  t.regex(plain.stderr, /not supported/);
  const past = await run('fallocate', ['-p', '-o', String(64 * MiB), '-l', '4096', m.path('origin')]);
  t.not(past.code, 0);
  t.regex(past.stderr, /Invalid argument/);
  t.true((await readRange(m.path('origin'), 0, MiB)).equals(old.subarray(0, MiB)));
});

test('ext4 on a loop device over /origin: discard reaches the origin, fstrim gives the space back, the snapshot stays exact', async (t) => {
  const m = await mountImage(t, { size: 512 * MiB, sparse: true, options: 'diff_size=256M' });
  const live = await loopDevice(t, m.path('origin'));
  const discardMax = Number((await fsp.readFile(`/sys/block/${live.replace('/dev/', '')}/queue/discard_max_bytes`, 'utf8')).trim());
  t.true(discardMax > 0, `discard_max_bytes ${discardMax}`);
  await must('mkfs.ext4', ['-q', '-E', 'nodiscard', live]);
  const fsDir = join(m.dir, 'live');
  await mountDevice(t, live, fsDir);
  await sh(`head -c 100M /dev/urandom > ${fsDir}/big && sync -f ${fsDir}`);
  const sum = (await must('sha256sum', [join(fsDir, 'big')])).split(' ')[0];
  const before = (await fsp.stat(m.origin)).blocks * 512;

  await must('fsfreeze', ['-f', fsDir]);
  try {
    await fsp.mkdir(m.path('snapshots', 's'));
  } finally {
    await must('fsfreeze', ['-u', fsDir]);
  }
  await sh(`rm ${fsDir}/big && sync -f ${fsDir}`);
  const trimmed = await must('fstrim', ['-v', fsDir]);
  t.regex(trimmed, /trimmed/);
  const after = (await fsp.stat(m.origin)).blocks * 512;
  t.log(`fstrim: ${trimmed.trim()}; origin file ${before} -> ${after} bytes allocated`);
  t.true(before - after >= 80 * MiB, `the origin file shrank by ${before - after} bytes`);
  await sh(`umount ${fsDir} && e2fsck -fn ${live}`);

  const snapDev = await loopDevice(t, m.path('snapshots', 's', 'image'), true);
  await must('e2fsck', ['-fn', snapDev]);
  const snapDir = join(m.dir, 'snap');
  await mountDevice(t, snapDev, snapDir, ['-o', 'ro,noload']);
  t.is((await must('sha256sum', [join(snapDir, 'big')])).split(' ')[0], sum, 'the snapshot still holds the file');
});

test('seeks and reads of an image racing first writes and punches of the origin never find a hole where the snapshot has data', async (t) => {
  const dir = await scratchDir(t);
  const SIZE = 32 * MiB;
  const BLOCK = 4 * KiB;
  const blocks = SIZE / BLOCK;
  // Data in about a third of the 4 KiB blocks: chunks that are wholly holes, wholly data and mixed.
  const isData: boolean[] = [];
  const expected = Buffer.alloc(SIZE);
  for (let b = 0; b < blocks; b++) isData.push(Math.floor(b / 16) % 3 === 0 ? randomInt(4) !== 0 : randomInt(5) === 0);
  const origin = join(dir, 'race.img');
  await makeImage(origin, SIZE, { sparse: true });
  const fh = await fsp.open(origin, 'r+');
  for (let b = 0; b < blocks; b++) {
    if (!isData[b]) continue;
    const data = randomBytes(BLOCK);
    data[0] = 1; // never a block of zeros
    data.copy(expected, b * BLOCK);
    await fh.write(data, 0, BLOCK, b * BLOCK);
  }
  await fh.close();
  const m = await mountImage(t, { origin, options: 'diff_size=64M,chunk_size=64K' });
  await fsp.mkdir(m.path('snapshots', 's'));

  const holeAt = (pos: number): boolean => pos >= SIZE || !isData[Math.floor(pos / BLOCK)];
  const allHoles = (from: number, to: number): boolean => {
    if (from >= to) return true;
    for (let b = Math.floor(from / BLOCK); b * BLOCK < to; b++) if (isData[b]) return false;
    return true;
  };
  const firstData = (pos: number): number | null => {
    for (let b = Math.floor(pos / BLOCK); b < blocks; b++) if (isData[b]) return Math.max(pos, b * BLOCK);
    return null;
  };

  const originFile = await fsp.open(m.path('origin'), 'r+');
  t.teardown(() => originFile.close());
  const imageFile = await fsp.open(m.path('snapshots', 's', 'image'), 'r');
  t.teardown(() => imageFile.close());

  let writersLeft = 2;
  const writer = async (): Promise<void> => {
    for (let i = 0; i < 200; i++) {
      const pos = randomInt(blocks) * BLOCK;
      if (randomInt(2) === 0) {
        await originFile.write(randomBytes(BLOCK), 0, BLOCK, pos);
      } else {
        const length = Math.min(SIZE - pos, (1 + randomInt(64)) * BLOCK);
        await fallocateModeAsync(originFile.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, pos, length);
      }
    }
    writersLeft--;
  };
  const problems: string[] = [];
  let seeksDuringWrites = 0;
  const seeker = async (): Promise<void> => {
    while (writersLeft > 0) {
      const pos = randomInt(SIZE);
      const data = await seekAsync(imageFile.fd, pos, 'data');
      const holeEnd = data ?? SIZE;
      if (!allHoles(pos, holeEnd)) problems.push(`SEEK_DATA ${pos} -> ${data}: data inside the reported hole`);
      const first = firstData(pos);
      if (first !== null && (data === null || data > first)) problems.push(`SEEK_DATA ${pos} -> ${data}: skipped the data at ${first}`);
      const hole = await seekAsync(imageFile.fd, pos, 'hole');
      if (hole === null || !holeAt(hole)) problems.push(`SEEK_HOLE ${pos} -> ${hole}: not a hole in the snapshot`);
      // What is reported as a hole reads as zeros.
      const n = Math.min(holeEnd - pos, 256 * KiB);
      if (n > 0) {
        const buf = Buffer.alloc(n, 0xff);
        await imageFile.read(buf, 0, n, pos);
        if (!buf.equals(Buffer.alloc(n))) problems.push(`read ${pos}+${n}: not zeros in a reported hole`);
      }
      if (writersLeft > 0) seeksDuringWrites++;
    }
  };
  await Promise.all([writer(), writer(), seeker(), seeker(), seeker()]);
  t.deepEqual(problems.slice(0, 10), []);
  t.true(seeksDuringWrites >= 50, `${seeksDuringWrites} seeks while the writers ran`);
  t.true((await readRange(m.path('snapshots', 's', 'image'), 0, SIZE)).equals(expected), 'the image is the snapshot');
  const status = (await m.status())['diff_storage'] as Record<string, number>;
  t.true(status['hole_chunks'] !== undefined && status['hole_chunks'] > 0, 'some chunks were copied as holes');
});

test('-o transport=fuse-native (libfuse 2 has no lseek): images are all data there, and sparse copies still come out right', async (t) => {
  const dir = await scratchDir(t);
  const origin = await sparseOrigin(dir, 64 * MiB, [[8 * MiB, MiB]]);
  const m = await mountImage(t, { origin, options: 'diff_size=64M,transport=fuse-native' });
  await fsp.mkdir(m.path('snapshots', 's'));
  const image = m.path('snapshots', 's', 'image');
  t.deepEqual(await dataRuns(image), [[0, 64 * MiB]]);
  const copy = join(dir, 'copy.img');
  await must('cp', ['--sparse=always', image, copy]);
  await must('cmp', [copy, image]);
  const r = await run('fallocate', ['-p', '-o', '0', '-l', '4096', m.path('origin')]);
  t.not(r.code, 0, 'no fallocate on fuse-native');
});
