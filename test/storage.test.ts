/**
 * The difference storage's life while snapshots are held, on real mounts: the
 * low-space event (once per crossing), a script that appends storage when told,
 * automatic growth up to its limit and overflow past it, reuse of space freed by
 * rmdir, and every refused storage-append (each with its errno, changing nothing).
 */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { CLI, MOUNT_HELPER, MiB, forceUnmount, isMounted, loopDevice, makeImage, mountDevice, mountImage, must, readRange, run, scratchDir, type Mounted } from './helpers/fixture.js';
import { EventTail, control, sleep, spawnGroup } from './helpers/events.js';
import { openEngine } from './helpers/engine-fixture.js';
import { StorageGrowth } from '../src/storage/storage-growth.js';
import { HEADER_BYTES } from '../src/storage/storage-mark.js';
import type { DiffStorageStats } from '../src/storage/diff-storage.js';

/** /status's diff_storage section: the storage's own stats, as JSON. */
type StorageStatus = DiffStorageStats;

async function storageStatus(m: Mounted): Promise<StorageStatus> {
  return (await m.status())['diff_storage'] as StorageStatus;
}

/** dd `mib` MiB of fresh random data into /origin at `atMiB`, in 1 MiB writes. */
async function writeOrigin(m: Mounted, atMiB: number, mib: number): Promise<void> {
  await must('dd', ['if=/dev/urandom', `of=${m.path('origin')}`, 'bs=1M', `count=${mib}`, `seek=${atMiB}`, 'conv=notrunc', 'status=none']);
}

async function imageEquals(m: Mounted, name: string, expected: Buffer): Promise<boolean> {
  return (await readRange(m.path('snapshots', name, 'image'), 0, expected.length)).equals(expected);
}

test('low-free-space fires exactly once per crossing, with the numbers to act on', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, options: 'diff_size=4M,diff_threshold=2M,chunk_size=64K' });
  const tail = new EventTail(t, m.mnt);
  await fsp.mkdir(m.path('snapshots', 'a'));
  await writeOrigin(m, 0, 1); // 1M used, 3M free: above
  await writeOrigin(m, 1, 2); // 3M used: crossed once
  const first = await tail.waitType('low-free-space');
  t.is(first['free_bytes'], 2 * MiB - 64 * 1024, 'reported at the allocation that crossed');
  t.is(first['requested_bytes'], 64 * 1024, 'what an append needs to get back to the threshold');
  await writeOrigin(m, 3, 1); // still below: no new event (the storage is now full)
  await fsp.rmdir(m.path('snapshots', 'a')); // all space back: re-armed
  t.is((await storageStatus(m)).free, 4 * MiB);
  await fsp.mkdir(m.path('snapshots', 'b'));
  await writeOrigin(m, 0, 3); // second crossing
  await tail.waitFor('second low-free-space', (e) => e.type === 'low-free-space' && e !== first);
  await fsp.mkdir(m.path('snapshots', 'marker'));
  await tail.waitType('snapshot-taken', 'marker');
  t.is(tail.of('low-free-space').length, 2, 'one event per crossing, never one per allocation');
  t.deepEqual(tail.of('storage-grown'), [], 'no automatic growth without diff_limit');
});

test('a script that appends storage on low-free-space keeps a snapshot exact through writes that would overflow it', async (t) => {
  const m = await mountImage(t, { size: 32 * MiB, options: 'diff_size=4M,diff_threshold=3M,chunk_size=64K' });
  const before = await fsp.readFile(m.origin);
  const tail = new EventTail(t, m.mnt);
  // What a user would write: follow the events, append 8M whenever space runs low.
  const script = `
    n=0
    cat "$1/events" | while IFS= read -r line; do
      case "$line" in
        *'"type":"low-free-space"'*) n=$((n+1)); echo "storage-append $2/extra$n.diff 8M" > "$1/control" ;;
      esac
    done`;
  spawnGroup(t, 'bash', ['-c', script, 'appender', m.mnt, m.dir]);
  await sleep(300);
  await fsp.mkdir(m.path('snapshots', 'held'));
  for (let mib = 0; mib < 24; mib++) {
    await writeOrigin(m, mib, 1); // 24M of copies in all; 4M would overflow at once
    await sleep(100);
  }
  const appended = tail.of('storage-appended');
  t.true(appended.length >= 2, `appended ${appended.length} times`);
  t.deepEqual(tail.of('corrupted'), []);
  t.is((await m.info('held'))['state'], 'ok');
  t.true(await imageEquals(m, 'held', before), 'the image is the origin as it was at the take');
  const s = await storageStatus(m);
  t.is(s.files.length, 1 + appended.length, '/status lists every file');
  t.deepEqual(s.files.slice(1).map((f) => [f.path, f.size]), appended.map((e) => [e['path'], e['bytes']]));
  t.deepEqual(appended.map((e) => e['bytes']), appended.map(() => 8 * MiB));
  t.is(s.used, 24 * MiB);
  t.is(s.size, 4 * MiB + appended.length * 8 * MiB);
});

test('automatic growth keeps a snapshot alive up to diff_limit; past it the snapshot is corrupted and the origin takes every write', async (t) => {
  const m = await mountImage(t, { size: 32 * MiB, options: 'diff_size=4M,diff_threshold=2M,diff_grow=4M,diff_limit=16M,chunk_size=64K' });
  const tail = new EventTail(t, m.mnt);
  const expected = await fsp.readFile(m.origin);
  t.like(await storageStatus(m), { size: 4 * MiB, limit: 16 * MiB, grow_step: 4 * MiB });
  await fsp.mkdir(m.path('snapshots', 'a'));

  // 12M of copies in one go: the storage grows ahead of the writes, 4M at a time.
  const start = Date.now();
  await writeOrigin(m, 0, 12);
  t.log(`12M through /origin with growth: ${Date.now() - start} ms`);
  await tail.waitFor('growth to 16M', (e) => e.type === 'storage-grown' && e['total'] === 16 * MiB);
  t.deepEqual(tail.of('corrupted'), []);
  t.is((await m.info('a'))['state'], 'ok');
  t.true(await imageEquals(m, 'a', expected), 'image exact while the storage grew under it');
  const grown = tail.of('storage-grown');
  t.deepEqual(grown.map((e) => [e['path'], e['bytes'], e['total']]), [
    [m.diff, 4 * MiB, 8 * MiB], [m.diff, 4 * MiB, 12 * MiB], [m.diff, 4 * MiB, 16 * MiB],
  ]);
  const s = await storageStatus(m);
  t.like(s, { size: 16 * MiB, used: 12 * MiB });
  t.deepEqual(s.files, [{ path: m.diff, size: 16 * MiB, slots: 256 }], 'grown in place: one file, 16M');
  t.is((await fsp.stat(m.diff)).size, HEADER_BYTES + 16 * MiB);
  t.deepEqual(tail.of('low-free-space'), [], 'growth handled every crossing so far');

  // 8M more: past the limit. The snapshot overflows; every origin write lands.
  await writeOrigin(m, 12, 8);
  const corrupted = await tail.waitType('corrupted', 'a');
  t.is(corrupted['error'], 'ENOSPC');
  t.is((await m.info('a'))['state'], 'corrupted');
  await t.throwsAsync(readRange(m.path('snapshots', 'a', 'image'), 0, 4096), { code: 'EIO' });
  t.is(tail.of('low-free-space').length, 1, 'at the limit the crossing is announced, once');
  t.is(tail.of('storage-grown').length, 3, 'never past the limit');
  t.is((await storageStatus(m)).size, 16 * MiB);
  const origin = await readRange(m.path('origin'), 0, 32 * MiB);
  t.true(origin.subarray(20 * MiB).equals(expected.subarray(20 * MiB)), 'untouched part of the origin unchanged');
  t.false(origin.subarray(0, 20 * MiB).equals(expected.subarray(0, 20 * MiB)));
  t.true(origin.equals(await fsp.readFile(m.origin)), 'what the mount shows is in the origin file');
});

test('four writers at once, growth starting only at the last slot: the snapshot stays exact', async (t) => {
  // A threshold of one chunk: growth starts only when the last slot is taken, so copies
  // running at that moment find no slot and must wait for it (the engine test above
  // makes that certain; here it is the whole path through FUSE).
  const m = await mountImage(t, { size: 16 * MiB, options: 'diff_size=1M,diff_threshold=64K,diff_grow=1M,diff_limit=8M,chunk_size=64K' });
  const expected = await fsp.readFile(m.origin);
  await fsp.mkdir(m.path('snapshots', 'a'));
  await Promise.all([0, 2, 4, 6].map((at) => writeOrigin(m, at, 2))); // four writers at once
  t.is((await m.info('a'))['state'], 'ok');
  t.true(await imageEquals(m, 'a', expected));
  t.true((await storageStatus(m)).size >= 8 * MiB);
});

test('engine: copies that find no slot wait for the growth under way (no FUSE, all at once)', async (t) => {
  const chunk = 64 * 1024;
  const { engine, events } = await openEngine(t, { size: 4 * MiB, chunkSize: chunk, diffSize: chunk, threshold: chunk });
  const growth = new StorageGrowth(engine.storage, 4 * MiB, 1 * MiB);
  engine.storage.manager = growth;
  const grown: number[] = [];
  growth.onGrown = ({ total }) => grown.push(total);
  const before = Buffer.alloc(engine.originSize);
  await engine.readOrigin(before, 0, before.length, 0);
  await engine.take('a');
  // 32 chunks written at once: the first copy takes the only slot and starts growth;
  // the other 31 find nothing and must wait for it rather than overflow.
  await Promise.all(Array.from({ length: 32 }, (_, i) => {
    const data = Buffer.alloc(chunk, i + 1);
    return engine.writeOrigin(data, 0, chunk, i * chunk);
  }));
  const snap = engine.get('a');
  t.is(snap?.state, 'ok', snap?.errorMessage ?? '');
  const image = Buffer.alloc(engine.originSize);
  if (snap !== undefined) await engine.readImage(snap, image, 0, image.length, 0);
  t.true(image.equals(before));
  t.deepEqual(grown, [chunk + MiB, chunk + 2 * MiB], 'two steps of 1M: 33 chunks needed');
  const types = [];
  for (let s = events.oldestSeq; s < events.headSeq; s++) types.push(events.get(s)?.type);
  t.false(types.includes('corrupted'));
});

test('writes the origin saw succeed are all there, byte for byte, past the growth limit', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, options: 'diff_size=1M,diff_grow=1M,diff_limit=2M,chunk_size=64K' });
  const data = Buffer.alloc(16 * MiB);
  for (let i = 0; i < data.length; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i);
  await fsp.mkdir(m.path('snapshots', 'a'));
  await fsp.writeFile(m.path('origin'), data, { flag: 'r+' });
  t.is((await m.info('a'))['state'], 'corrupted');
  t.true((await fsp.readFile(m.origin)).equals(data));
});

test('space freed by rmdir is reused: the storage does not grow when it need not', async (t) => {
  const m = await mountImage(t, { size: 32 * MiB, options: 'diff_size=8M,diff_threshold=2M,diff_grow=4M,diff_limit=64M,chunk_size=64K' });
  const tail = new EventTail(t, m.mnt);
  await fsp.mkdir(m.path('snapshots', 'a'));
  await writeOrigin(m, 0, 5);
  t.like(await storageStatus(m), { used: 5 * MiB, size: 8 * MiB });
  await fsp.rmdir(m.path('snapshots', 'a'));
  t.like(await storageStatus(m), { used: 0, size: 8 * MiB });
  const expected = await fsp.readFile(m.origin);
  await fsp.mkdir(m.path('snapshots', 'b'));
  await writeOrigin(m, 16, 5); // other chunks: 5M of new copies into the freed slots
  await fsp.mkdir(m.path('snapshots', 'marker'));
  await tail.waitType('snapshot-taken', 'marker');
  t.deepEqual(tail.of('storage-grown'), [], 'no growth: freed slots were used first');
  t.deepEqual(tail.of('low-free-space'), []);
  t.like(await storageStatus(m), { used: 5 * MiB, size: 8 * MiB });
  t.is((await fsp.stat(m.diff)).size, HEADER_BYTES + 8 * MiB, 'the file did not grow');
  t.true(await imageEquals(m, 'b', expected), 'reused slots hold b\'s data, not a\'s');
});

test('bad storage-append requests get a clear errno each and change nothing', async (t) => {
  const dir = await scratchDir(t);
  const originPath = join(dir, 'fs.img');
  await makeImage(originPath, 32 * MiB, { sparse: true });
  await must('mkfs.ext4', ['-q', '-F', originPath]);
  const m = await mountImage(t, { origin: originPath, options: 'diff_size=4M,chunk_size=64K' });
  const tail = new EventTail(t, m.mnt);

  // The origin's file system, through a loop device over the origin file and through
  // one over MOUNT/origin: storage there would write into the origin (or the mount).
  const direct = await loopDevice(t, originPath, true);
  await mountDevice(t, direct, join(m.dir, 'via-file'), ['-o', 'ro,noload']);
  const through = await loopDevice(t, m.path('origin'), true);
  await mountDevice(t, through, join(m.dir, 'via-mount'), ['-o', 'ro,noload']);

  const victim = join(m.dir, 'precious.dat');
  await fsp.writeFile(victim, 'not yours\n');
  const freeBytes = await fsp.statfs(m.dir).then((s) => s.bavail * s.bsize);
  const tooBig = Math.ceil((freeBytes + 2 ** 30) / MiB);

  const cases: Array<[string, string, string]> = [
    ['inside the mount', `storage-append ${m.path('more.diff')} 1M`, 'EINVAL'],
    ['inside the mount, deeper', `storage-append ${m.path('snapshots', 'x', 'more.diff')} 1M`, 'EINVAL'],
    ['the origin file', `storage-append ${m.origin} 1M`, 'EINVAL'],
    ['a loop device over the origin file', `storage-append ${join(m.dir, 'via-file', 'more.diff')} 1M`, 'EINVAL'],
    ['a loop device over MOUNT/origin', `storage-append ${join(m.dir, 'via-mount', 'more.diff')} 1M`, 'EINVAL'],
    ['an existing non-empty file', `storage-append ${victim} 1M`, 'EEXIST'],
    ['a file already in the storage', `storage-append ${m.diff} 1M`, 'EEXIST'],
    ['more than the file system has free', `storage-append ${join(m.dir, 'huge.diff')} ${tooBig}M`, 'ENOSPC'],
    ['a directory that does not exist', `storage-append ${join(m.dir, 'nowhere', 'more.diff')} 1M`, 'ENOENT'],
    ['no arguments', 'storage-append', 'EINVAL'],
    ['no size', `storage-append ${join(m.dir, 'more.diff')}`, 'EINVAL'],
    ['a bad size', `storage-append ${join(m.dir, 'more.diff')} 12Q`, 'EINVAL'],
    ['a zero size', `storage-append ${join(m.dir, 'more.diff')} 0`, 'EINVAL'],
    ['too many arguments', `storage-append ${join(m.dir, 'more.diff')} 1M 2M`, 'EINVAL'],
    ['a relative path', 'storage-append more.diff 1M', 'EINVAL'],
  ];
  const listing = async (): Promise<string[]> => (await fsp.readdir(m.dir)).sort();
  const filesBefore = await listing();
  const statusBefore = await storageStatus(m);
  for (const [what, line, errno] of cases) {
    t.is(await control(m.mnt, line), errno, what);
    t.deepEqual(await listing(), filesBefore, `${what}: no file created`);
    t.deepEqual(await storageStatus(m), statusBefore, `${what}: storage unchanged`);
  }
  t.is(await fsp.readFile(victim, 'utf8'), 'not yours\n');
  t.true((await readRange(m.path('origin'), 0, 4096)).equals(await readRange(originPath, 0, 4096)));

  // The CLI says why, in one line, and fails.
  const cli = await run(process.execPath, [CLI, 'storage', 'append', m.mnt, victim, '1M']);
  t.not(cli.code, 0);
  t.regex(cli.stderr.trim(), /^blksnapfs: .*(EEXIST|exists)/);
  t.is(cli.stderr.trim().split('\n').length, 1);

  // The reasons are in the daemon's log.
  const log = await fsp.readFile(m.log, 'utf8');
  t.regex(log, /is inside the mount[^\n]*storage-append refused/);
  t.regex(log, /loop device over the origin[^\n]*storage-append refused/);

  // A good one works and shows up everywhere.
  t.is(await control(m.mnt, `storage-append ${join(m.dir, 'more.diff')} 3M`), null);
  const appended = await tail.waitType('storage-appended');
  t.like(appended, { path: join(m.dir, 'more.diff'), bytes: 3 * MiB });
  const s = await storageStatus(m);
  t.deepEqual(s.files.map((f) => [f.path, f.size]), [[m.diff, 4 * MiB], [join(m.dir, 'more.diff'), 3 * MiB]]);
  t.is(s.size, 7 * MiB);
  t.is(tail.of('storage-appended').length, 1, 'only the good request raised an event');
});

test('growth and backlog options are checked at mount: one clear line, nothing left behind', async (t) => {
  const dir = await scratchDir(t);
  const origin = join(dir, 'disk.img');
  await makeImage(origin, 16 * MiB, { sparse: true });
  const mnt = join(dir, 'mnt');
  await fsp.mkdir(mnt);
  const cases: Array<[string, RegExp]> = [
    ['diff_grow=4M', /diff_grow needs diff_limit/],
    ['diff_size=8M,diff_limit=4M', /diff_limit \(4M\) is smaller than the difference storage \(8M\)/],
    ['event_backlog=0', /event_backlog must be a whole number from 1/],
    ['event_backlog=lots', /event_backlog must be a whole number/],
    ['diff_limit=many', /bad size "many"/],
  ];
  for (const [options, message] of cases) {
    const r = await run(process.execPath, [MOUNT_HELPER, origin, mnt, '-o', `diff_storage=${join(dir, 'd.diff')},${options}`]);
    if (r.code === 0) await forceUnmount(mnt);
    t.not(r.code, 0, options);
    t.regex(r.stderr, message, options);
    t.is(r.stderr.trim().split('\n').length, 1, `${options}: one line`);
    t.deepEqual((await fsp.readdir(dir)).sort(), ['disk.img', 'mnt'], `${options}: nothing created`);
    t.false(await isMounted(mnt));
  }
});
