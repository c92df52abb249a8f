/**
 * Change tracking across mounts, on real mounts: a clean remount (and a simulated
 * reboot) resumes the generation so the next backup is incremental and exact; every
 * way continuity can be broken between two mounts (an outside write, even with its
 * mtime put back, a resize, a new block size, kill -9, a damaged state file, a loop
 * device re-attached) starts a new generation with the reason in a cbt-reset event;
 * a failed save neither hangs the unmount nor is trusted later; the 255-period wrap
 * still happens exactly once across remounts.
 */
import test, { type ExecutionContext } from 'ava';
import { promises as fsp } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import {
  CLI, KiB, MOUNT_HELPER, MiB, forceUnmount, makeImage, mountDevice, mountImage, must, run, scratchDir, writeRange,
  type Mounted,
} from './helpers/fixture.js';
import { assertReset, attach, resets, stateHeader, tracking, unmount } from './helpers/cbt-tracking.js';

const BS = 64 * KiB;

/** Mount `origin` again (a new mount point and difference storage, the same default state file). */
function remount(t: ExecutionContext, origin: string, options = 'diff_size=32M,block_size=64K'): Promise<Mounted> {
  return mountImage(t, { origin, options });
}

interface BackupResult {
  kind: string;
  reason: string;
  generation_id: string;
  changes_number: number;
  since_changes_number: number | null;
  copied_bytes: number;
  copied_blocks: number;
}

async function backup(m: Mounted, name: string, target: string, incremental: boolean): Promise<BackupResult> {
  const out = await must(process.execPath, [CLI, 'backup', m.mnt, name, target, '--json', ...(incremental ? ['--since-manifest', `${target}.manifest.json`] : [])]);
  const lines = out.split('\n').filter((l) => l.length > 0).map((l) => JSON.parse(l) as Record<string, unknown>);
  return lines[lines.length - 1] as unknown as BackupResult;
}

test('a clean remount and a simulated reboot resume tracking: the next backup is incremental, exact, same generation', async (t) => {
  const SIZE = 32 * MiB;
  const m1 = await mountImage(t, { size: SIZE, options: 'diff_size=32M,block_size=64K' });
  const first = await tracking(m1);
  t.like(first, { resumed: false, generation_reason: 'first', state_file: `${m1.origin}.cbt` });
  t.like((await resets(m1))[0], { reason: 'first', generation_id: first.generation_id });
  t.like(await stateHeader(`${m1.origin}.cbt`), { state: 'in-use' }, 'marked in use while mounted');
  const target = join(await scratchDir(t), 'disk.img');

  await writeRange(m1.path('origin'), 3 * BS, randomBytes(100));
  await fsp.mkdir(m1.path('snapshots', 's1'));
  t.like(await backup(m1, 's1', target, false), { kind: 'full', changes_number: 1 });
  // Written after s1 but before the unmount: must be in the next incremental backup.
  const writes: Array<[number, number]> = [[7 * BS + 5, 10], [20 * BS - 1, 2]];
  await writeRange(m1.path('origin'), 7 * BS + 5, randomBytes(10));
  await unmount(m1);
  t.like(await stateHeader(`${m1.origin}.cbt`), { state: 'clean', generation_id: first.generation_id, active_number: 2 });
  await fsp.writeFile('/proc/sys/vm/drop_caches', '3'); // a reboot as far as caches go

  const m2 = await remount(t, m1.origin);
  const resumed = await tracking(m2);
  t.like(resumed, { resumed: true, generation_id: first.generation_id, changes_number: 1, active_number: 2, generation_started: first.generation_started, generation_reason: 'first' });
  t.truthy(resumed.resumed_from_save);
  t.deepEqual(await resets(m2), [], 'no cbt-reset at a resumed mount');
  const info = await must(process.execPath, [CLI, 'cbt', 'info', m2.mnt, '--json']);
  t.like(JSON.parse(info), { resumed: true, generation_id: first.generation_id, generation_started: first.generation_started });

  await writeRange(m2.path('origin'), 20 * BS - 1, randomBytes(2));
  await fsp.mkdir(m2.path('snapshots', 's2'));
  const inc = await backup(m2, 's2', target, true);
  const blocks = new Set(writes.flatMap(([o, l]) => [Math.floor(o / BS), Math.floor((o + l - 1) / BS)]));
  t.like(inc, { kind: 'incremental', generation_id: first.generation_id, changes_number: 2, since_changes_number: 1, copied_blocks: blocks.size, copied_bytes: blocks.size * BS });
  await must('cmp', [target, m2.path('snapshots', 's2', 'image')]);
  const snapInfo = JSON.parse(await must(process.execPath, [CLI, 'cbt', 'info', m2.mnt, 's2', '--json'])) as Record<string, unknown>;
  t.like(snapInfo, { generation_id: first.generation_id, changes_number: 2, resumed: true });
});

test('between mounts: a direct write (even with its mtime put back), a chmod, a resize, a new block size each start a new generation', async (t) => {
  const m1 = await mountImage(t, { size: 8 * MiB, options: 'diff_size=32M,block_size=64K' });
  let gen = (await tracking(m1)).generation_id;
  await writeRange(m1.path('origin'), 0, randomBytes(10));
  await unmount(m1);
  const origin = m1.origin;

  // A write straight into the image, then its times put back: ctime still tells.
  const times = join(await scratchDir(t), 'times');
  await must('touch', ['-r', origin, times]);
  const before = await fsp.stat(origin, { bigint: true });
  await writeRange(origin, 5 * BS, Buffer.from('outside'));
  await must('touch', ['-m', '-r', times, origin]);
  t.is((await fsp.stat(origin, { bigint: true })).mtimeNs, before.mtimeNs, 'mtime was put back, to the nanosecond');
  const m2 = await remount(t, origin);
  gen = await assertReset(t, m2, 'origin-changed', gen);
  await unmount(m2);

  // Sanity: with nothing in between, the next mount resumes that generation.
  const m3 = await remount(t, origin);
  t.like(await tracking(m3), { resumed: true, generation_id: gen });
  await unmount(m3);

  await fsp.chmod(origin, 0o640); // metadata only, but nothing can tell it from a write
  const m4 = await remount(t, origin);
  gen = await assertReset(t, m4, 'origin-changed', gen);
  await unmount(m4);

  await must('truncate', ['-s', String(8 * MiB + BS), origin]);
  const m5 = await remount(t, origin);
  gen = await assertReset(t, m5, 'capacity', gen);
  await unmount(m5);

  const m6 = await remount(t, origin, 'diff_size=32M,block_size=128K');
  await assertReset(t, m6, 'capacity', gen);
});

test('kill -9 of the daemon leaves the state in use: the next mount says unclean', async (t) => {
  const m1 = await mountImage(t, { size: 8 * MiB, options: 'diff_size=32M,block_size=64K' });
  const gen = (await tracking(m1)).generation_id;
  await writeRange(m1.path('origin'), BS, randomBytes(10));
  const pid = Number((await m1.status())['pid']);
  process.kill(pid, 'SIGKILL');
  await forceUnmount(m1.mnt);
  t.like(await stateHeader(`${m1.origin}.cbt`), { state: 'in-use', generation_id: gen });
  const m2 = await remount(t, m1.origin);
  await assertReset(t, m2, 'unclean', gen);
});

test('a damaged state file (a flipped byte, a truncation) is state-invalid and the mount still works; a foreign file is refused', async (t) => {
  const m1 = await mountImage(t, { size: 8 * MiB, options: 'diff_size=32M,block_size=64K' });
  let gen = (await tracking(m1)).generation_id;
  await writeRange(m1.path('origin'), BS, randomBytes(10));
  await unmount(m1);
  const state = `${m1.origin}.cbt`;

  const bytes = await fsp.readFile(state);
  t.is(bytes.length, 48 + bytes.readUInt32LE(12) + 8 * MiB / BS, 'one byte per block plus the header');
  const flipAt = bytes.length - 3; // in the map
  bytes[flipAt] = (bytes[flipAt] ?? 0) ^ 0x04;
  await fsp.writeFile(state, bytes);
  const m2 = await remount(t, m1.origin);
  gen = await assertReset(t, m2, 'state-invalid', gen);
  await writeRange(m2.path('origin'), 0, randomBytes(10));
  await fsp.mkdir(m2.path('snapshots', 'works'));
  await unmount(m2);

  const whole = await fsp.readFile(state);
  await fsp.truncate(state, Math.floor(whole.length / 2));
  const m3 = await remount(t, m1.origin);
  gen = await assertReset(t, m3, 'state-invalid', gen);
  await unmount(m3);

  // One damaged byte in the magic is still our damaged file, not somebody else's.
  const magic = await fsp.readFile(state);
  magic[2] = 0x21;
  await fsp.writeFile(state, magic);
  const m4 = await remount(t, m1.origin);
  await assertReset(t, m4, 'state-invalid', gen);
  await unmount(m4);

  // cbt_state naming somebody's file: refused, the file untouched, nothing mounted.
  const dir = await scratchDir(t);
  const foreign = join(dir, 'notes.txt');
  await fsp.writeFile(foreign, 'my notes\n');
  const mnt = join(dir, 'mnt');
  await fsp.mkdir(mnt);
  t.teardown(() => forceUnmount(mnt));
  const r = await run(process.execPath, [MOUNT_HELPER, m1.origin, mnt, '-o', `diff_storage=${dir}/d.diff,diff_size=16M,cbt_state=${foreign}`]);
  t.is(r.code, 32);
  t.regex(r.stderr, /notes\.txt.*not a blksnapfs state file/);
  t.is(await fsp.readFile(foreign, 'utf8'), 'my notes\n');
  t.deepEqual((await fsp.readdir(dir)).sort(), ['mnt', 'notes.txt']);
});

test('a save that fails (state on a full file system) neither hangs the unmount nor is trusted: the next mount says unclean', async (t) => {
  const dir = await scratchDir(t);
  const small = join(dir, 'small');
  await mountDevice(t, 'tmpfs', small, ['-t', 'tmpfs', '-o', 'size=64k']);
  const origin = join(dir, 'disk.img');
  await makeImage(origin, 8 * MiB);
  const cbtState = join(small, 'disk.cbt');
  const options = `diff_size=32M,block_size=64K,cbt_state=${cbtState}`;
  const m1 = await mountImage(t, { origin, options });
  const gen = (await tracking(m1)).generation_id;
  // Fill the file system: the in-use mark is there, the saved state (a new file) cannot follow.
  await run('dd', ['if=/dev/zero', `of=${join(small, 'filler')}`, 'bs=4k', 'status=none']);
  const data = randomBytes(BS);
  await writeRange(m1.path('origin'), 3 * BS, data);
  const started = Date.now();
  await unmount(m1);
  const took = Date.now() - started;
  t.true(took < 30_000, `the unmount took ${took} ms`); // a hang, not a slow shared machine
  const log = await fsp.readFile(m1.log, 'utf8');
  t.regex(log, /cannot save change tracking/);
  t.like(await stateHeader(cbtState), { state: 'in-use' });
  t.true((await fsp.readFile(origin)).subarray(3 * BS, 4 * BS).equals(data), 'the origin has the write');
  t.deepEqual((await fsp.readdir(small)).sort(), ['disk.cbt', 'filler'], 'no temporary file left behind');

  await fsp.rm(join(small, 'filler'));
  const m2 = await mountImage(t, { origin, options });
  await assertReset(t, m2, 'unclean', gen);
});

test('256 take/destroy rounds across several remounts wrap exactly once', async (t) => {
  const m0 = await mountImage(t, { size: 4 * MiB, options: 'diff_size=16M,block_size=64K' });
  const gen0 = (await tracking(m0)).generation_id;
  const origin = m0.origin;
  let m = m0;
  const wraps: Array<Record<string, unknown>> = [];
  let round = 0;
  for (let mount = 0; mount < 4; mount++) {
    if (mount > 0) m = await remount(t, origin, 'diff_size=16M,block_size=64K');
    for (let i = 0; i < 64; i++) {
      round++;
      await writeRange(m.path('origin'), (round % 64) * BS, randomBytes(8));
      await fsp.mkdir(m.path('snapshots', `r${round}`));
      const info = await m.info(`r${round}`);
      if (round < 256) t.like(info, { generation_id: gen0, changes_number: round }, `round ${round}`);
      await fsp.rmdir(m.path('snapshots', `r${round}`));
    }
    const ev = await resets(m);
    if (mount > 0) t.true((await tracking(m)).resumed || ev.some((e) => e['reason'] === 'wrap'), `mount ${mount} resumed`);
    wraps.push(...ev.filter((e) => e['reason'] === 'wrap'));
    t.deepEqual(ev.filter((e) => e['reason'] !== 'wrap').map((e) => e['reason']), mount === 0 ? ['first'] : [], `mount ${mount}: no other reset`);
    await unmount(m);
  }
  t.is(round, 256);
  t.is(wraps.length, 1, JSON.stringify(wraps));
  const m5 = await remount(t, origin, 'diff_size=16M,block_size=64K');
  const after = await tracking(m5);
  t.like(after, { resumed: true, generation_id: String(wraps[0]?.['generation_id']), generation_reason: 'wrap', changes_number: 1, active_number: 2 });
  t.not(after.generation_id, gen0);
});

test('a loop device origin: resumed in the same boot; re-attached as another loop device it is origin-changed unless cbt_trust', async (t) => {
  const dir = await scratchDir(t);
  const backing = join(dir, 'backing.img');
  await makeImage(backing, 16 * MiB);
  const cbtState = join(dir, 'loop.cbt');
  const options = `diff_size=16M,block_size=64K,cbt_state=${cbtState}`;
  const loop1 = await attach(t, backing);

  const m1 = await mountImage(t, { origin: loop1, options });
  let gen = (await tracking(m1)).generation_id;
  await writeRange(m1.path('origin'), 2 * BS, randomBytes(10));
  await unmount(m1);
  // Same device, same boot, nothing written since: resumed.
  const m2 = await mountImage(t, { origin: loop1, options });
  t.like(await tracking(m2), { resumed: true, generation_id: gen });
  await writeRange(m2.path('origin'), 4 * BS, randomBytes(10));
  await unmount(m2);

  // A write through the device outside the mount moves its write counter.
  await must('dd', ['if=/dev/urandom', `of=${loop1}`, 'bs=4k', 'count=1', 'seek=100', 'oflag=direct', 'conv=notrunc', 'status=none']);
  const m3 = await mountImage(t, { origin: loop1, options });
  gen = await assertReset(t, m3, 'origin-changed', gen);
  await unmount(m3);

  // A write straight into the backing file bypasses the device's counters; its ctime tells.
  await writeRange(backing, 6 * BS, Buffer.from('behind the loop device'));
  const m4 = await mountImage(t, { origin: loop1, options });
  gen = await assertReset(t, m4, 'origin-changed', gen);
  await unmount(m4);

  // Attached again as another loop device (a new diskseq, another major:minor).
  const loop2 = await attach(t, backing);
  t.not(loop2, loop1);
  await must('losetup', ['-d', loop1]);
  const m5 = await mountImage(t, { origin: loop2, options });
  gen = await assertReset(t, m5, 'origin-changed', gen);
  await unmount(m5);

  // With cbt_trust the operator vouches for the device: resumed after the re-attach.
  const loop3 = await attach(t, backing);
  await must('losetup', ['-d', loop2]);
  const m6 = await mountImage(t, { origin: loop3, options: `${options},cbt_trust` });
  t.like(await tracking(m6), { resumed: true, generation_id: gen });
});
