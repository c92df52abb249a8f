/**
 * The libfuse 3 transport on real mounts: requests in flight, open files after rmdir,
 * the end of the session (umount -l, symlinked mount points, umount && mount), long
 * paths with allow_other, and /events readers that are killed.
 */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  CLI, MiB, MOUNT_HELPER, daemonPids, forceUnmount, isMounted, loopDevice, makeImage, mountDevice, mountImage, must, run,
  scratchDir, sh,
} from './helpers/fixture.js';

interface TransportStatus {
  transport: string;
  requests: number;
  in_flight: number;
  max_in_flight: number;
  credentials: boolean;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function alive(pid: number): Promise<boolean> {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test('libfuse3 is the default transport, and the kernel keeps many requests in flight', async (t) => {
  const m = await mountImage(t, { size: 256 * MiB, sparse: true });
  const before = (await m.status())['transport'] as TransportStatus;
  t.is(before.transport, 'libfuse3');
  t.true(before.credentials);
  await must('fio', ['--name=qd16', `--filename=${m.path('origin')}`, '--rw=randwrite', '--bs=4k', '--iodepth=16',
    '--ioengine=libaio', '--direct=1', '--size=64M', '--time_based', '--runtime=3', '--output=/dev/null'], { timeoutMs: 60_000 });
  const after = (await m.status())['transport'] as TransportStatus;
  t.true(after.max_in_flight >= 8, `at most ${after.max_in_flight} requests were in flight at once`);
});

test('an open image is read, fstat-ed and lseek-ed 3 s after rmdir, with the old data', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB });
  const old = await fsp.readFile(m.origin);
  await fsp.mkdir(m.path('snapshots', 's'));
  const image = m.path('snapshots', 's', 'image');
  const copy = join(m.dir, 'copy');
  const tail = join(m.dir, 'tail');
  // One descriptor, opened before rmdir, used 3 s after: fstat (stat -L of the fd),
  // lseek to the end (tail -c), and a read from where it stands (cat).
  const out = await sh(`exec 3<'${image}'; rmdir '${m.path('snapshots', 's')}'; dd if=/dev/urandom of='${m.path('origin')}' bs=1M count=16 conv=notrunc status=none; sleep 3;
    stat -L -c %s /proc/self/fd/3; tail -c 65536 <&3 > '${tail}'; cat /proc/self/fd/3 > '${copy}'; exec 3<&-`);
  t.is(out.trim(), String(16 * MiB), 'fstat still sees the image size');
  t.true((await fsp.readFile(tail)).equals(old.subarray(old.length - 65536)), 'lseek to the end and read: the old data');
  t.true((await fsp.readFile(copy)).equals(old), 'the whole image: the old data');
});

test('umount -l with an open image and ext4 on a loop device over /origin: both work until closed, then the daemon exits', async (t) => {
  const dir = await scratchDir(t);
  const origin = join(dir, 'disk.img');
  await makeImage(origin, 64 * MiB, { sparse: true });
  await must('mkfs.ext4', ['-q', '-F', origin]);
  const m = await mountImage(t, { origin, options: 'diff_size=32M' });
  const pid = (await m.status())['pid'] as number;
  const dev = await loopDevice(t, m.path('origin'));
  const fsDir = join(dir, 'fs');
  await mountDevice(t, dev, fsDir);
  await fsp.writeFile(join(fsDir, 'before'), 'before');
  await must('sync', []);
  await fsp.mkdir(m.path('snapshots', 's'));
  const image = await fsp.open(m.path('snapshots', 's', 'image'), 'r');
  t.teardown(() => image.close().catch(() => undefined));
  const first = Buffer.alloc(64 * 1024);
  await image.read(first, 0, first.length, 0);

  await must('umount', ['-l', m.mnt]);
  t.false(await isMounted(m.mnt), 'the mount point is detached');
  await sleep(1500);
  t.true(await alive(pid), 'the daemon keeps serving what is open');
  const data = randomBytes(4 * MiB);
  await fsp.writeFile(join(fsDir, 'after'), data);
  await must('sync', []);
  await must('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches']);
  t.true((await fsp.readFile(join(fsDir, 'after'))).equals(data), 'the file system on the loop device still works');
  const again = Buffer.alloc(first.length);
  await image.read(again, 0, again.length, 0);
  t.true(again.equals(first), 'the open image still reads its point in time');

  await must('umount', [fsDir]);
  await must('losetup', ['-d', dev]);
  await image.close();
  for (let i = 0; i < 100 && (await alive(pid)); i++) await sleep(100);
  t.false(await alive(pid), 'the daemon exits once the last file is closed');
  await must('e2fsck', ['-fn', origin]);
});

test('a mount point reached through a symlinked directory stays up', async (t) => {
  const dir = await scratchDir(t);
  await fsp.mkdir(join(dir, 'real', 'mnt'), { recursive: true });
  await fsp.symlink(join(dir, 'real'), join(dir, 'link'));
  const origin = join(dir, 'disk.img');
  await makeImage(origin, 16 * MiB, { sparse: true });
  const viaLink = join(dir, 'link', 'mnt');
  t.teardown(() => forceUnmount(join(dir, 'real', 'mnt')));
  await must(process.execPath, [MOUNT_HELPER, origin, viaLink, '-o', `diff_storage=${join(dir, 'd.diff')},diff_size=16M`]);
  await sleep(2000);
  t.true(await isMounted(join(dir, 'real', 'mnt')));
  const status = JSON.parse(await fsp.readFile(join(viaLink, 'status'), 'utf8')) as { mountpoint: string };
  t.is(status.mountpoint, join(dir, 'real', 'mnt'));
});

test('umount && mount of the same origin works 20 times in a row; blksnapfs umount returns after the daemon is gone', async (t) => {
  const dir = await scratchDir(t);
  const origin = join(dir, 'disk.img');
  const mnt = join(dir, 'mnt');
  await fsp.mkdir(mnt);
  await makeImage(origin, 32 * MiB, { sparse: true });
  t.teardown(() => forceUnmount(mnt));
  const opts = `diff_storage=${join(dir, 'd.diff')},diff_size=16M`;
  for (let i = 0; i < 20; i++) {
    const r = await run(process.execPath, [MOUNT_HELPER, origin, mnt, '-o', opts]);
    t.is(r.code, 0, `mount ${i + 1}: ${r.stderr.trim()}`);
    if (r.code !== 0) return;
    await fsp.mkdir(join(mnt, 'snapshots', `s${i}`));
    await must('umount', [mnt]);
  }
  // A live mount of the same origin is refused at once, not after a wait.
  await must(process.execPath, [MOUNT_HELPER, origin, mnt, '-o', opts]);
  const other = join(dir, 'other');
  await fsp.mkdir(other);
  const busy = await run(process.execPath, [MOUNT_HELPER, origin, other, '-o', `diff_storage=${join(dir, 'e.diff')},diff_size=16M`]);
  t.not(busy.code, 0);
  // This message comes only from the check made before any waiting.
  t.regex(busy.stderr, /already mounted by blksnapfs on/);

  const pid = JSON.parse(await fsp.readFile(join(mnt, 'status'), 'utf8')).pid as number;
  await must(process.execPath, [CLI, 'umount', mnt]);
  t.false(await alive(pid), 'blksnapfs umount returned after the daemon exited');
  t.deepEqual(await daemonPids(mnt), []);
});

test('origin and mount paths of ~900 characters with allow_other: the kernel still checks permissions', async (t) => {
  const dir = await scratchDir(t);
  let deep = dir;
  while (deep.length < 850) deep = join(deep, 'd'.repeat(60));
  await fsp.mkdir(deep, { recursive: true });
  await fsp.chmod(dir, 0o755);
  const origin = join(deep, `${'o'.repeat(900 - deep.length - 1)}`);
  await makeImage(origin, 16 * MiB);
  await fsp.chmod(origin, 0o600);
  const mnt = join(deep, 'm'.repeat(900 - deep.length - 1));
  await fsp.mkdir(mnt);
  t.true(origin.length >= 890 && mnt.length >= 890);
  t.teardown(() => forceUnmount(mnt));
  await must(process.execPath, [MOUNT_HELPER, origin, mnt, '-o', `allow_other,diff_storage=${join(dir, 'd.diff')},diff_size=16M`]);
  const line = (await fsp.readFile('/proc/mounts', 'utf8')).split('\n').find((l) => l.split(' ')[1] === mnt);
  t.truthy(line);
  t.regex(line ?? '', /default_permissions/);
  t.regex(line ?? '', /allow_other/);
  const st = await fsp.stat(join(mnt, 'origin'));
  t.is(st.mode & 0o777, 0o600, '/origin grants no more than the origin');
  await fsp.mkdir(join(mnt, 'snapshots', 's'));
  t.is((await fsp.stat(join(mnt, 'snapshots', 's', 'image'))).mode & 0o777, 0o600, 'an image grants no more than the origin');
  const image = await run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'head', '-c', '16', join(mnt, 'snapshots', 's', 'image')]);
  t.not(image.code, 0, 'another user cannot read its image either');
  const asNobody = await run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'head', '-c', '16', join(mnt, 'origin')]);
  t.not(asNobody.code, 0, 'another user cannot read a 0600 origin through the mount');
  t.regex(asNobody.stderr, /Permission denied/);
});

test('a killed cat of /events releases its request at once; 50 readers and a killed one leave other I/O working', async (t) => {
  const m = await mountImage(t, { size: 64 * MiB });
  const readers = Array.from({ length: 50 }, () => spawn('cat', [m.path('events')], { stdio: ['ignore', 'pipe', 'ignore'] }));
  const outputs = readers.map(() => ({ text: '' }));
  readers.forEach((r, i) => r.stdout.on('data', (d: Buffer) => { (outputs[i] as { text: string }).text += d.toString(); }));
  t.teardown(() => readers.forEach((r) => r.exitCode === null && r.kill('SIGKILL')));
  const victim = spawn('cat', [m.path('events')], { stdio: 'ignore' });
  t.teardown(() => { if (victim.exitCode === null) victim.kill('SIGKILL'); });
  await sleep(500);
  const exited = new Promise<number>((resolve) => victim.on('exit', () => resolve(Date.now())));
  const killedAt = Date.now();
  victim.kill('SIGKILL');
  const took = (await exited) - killedAt;
  t.true(took < 500, `the killed reader took ${took} ms to go`);

  await must('dd', [`if=${m.path('origin')}`, 'of=/dev/null', 'bs=1M', 'iflag=direct'], { timeoutMs: 30_000 });
  await fsp.mkdir(m.path('snapshots', 'e'));
  for (let i = 0; i < 50 && outputs.some((o) => !o.text.includes('"snapshot-taken"')); i++) await sleep(100);
  t.true(outputs.every((o) => o.text.includes('"snapshot-taken"')), 'every reader saw the event');
});
