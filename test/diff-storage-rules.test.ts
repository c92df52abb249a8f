/**
 * The difference-storage rules of the contract, on real mounts: `diff_storage` takes a
 * new file, an empty one or one blksnapfs made, and refuses anybody else's (EEXIST, one
 * line, the file untouched); nothing is ever opened through a symlink; and where the
 * storage may live is decided on devices and inodes, so a symlink into a file system
 * stacked on the mount is refused at once (it used to deadlock the daemon).
 */
import test, { type ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import { existsSync, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import {
  MOUNT_HELPER, MiB, daemonPids, forceUnmount, isMounted, loopDevice, makeImage, mountDevice, mountImage, must, run, scratchDir,
} from './helpers/fixture.js';
import { control } from './helpers/events.js';
import type { DiffStorageStats } from '../src/storage/diff-storage.js';

async function digest(path: string): Promise<string> {
  return createHash('sha256').update(await fsp.readFile(path)).digest('hex');
}

/** umount returns before the daemon has let go of its files: wait for it to exit. */
async function daemonGone(mnt: string): Promise<void> {
  for (let i = 0; i < 100 && (await daemonPids(mnt)).length > 0; i++) await new Promise((res) => setTimeout(res, 100));
}

/** Mount `origin` at `mnt` with these options; the helper's result (teardown registered). */
async function mountWith(t: ExecutionContext, origin: string, mnt: string, options: string): Promise<{ code: number; stderr: string }> {
  t.teardown(() => forceUnmount(mnt));
  return run(process.execPath, [MOUNT_HELPER, origin, mnt, '-o', options]);
}

test('defect 5: diff_storage naming somebody else\'s file is refused with EEXIST, one line, the file untouched', async (t) => {
  const dir = await scratchDir(t);
  const origin = join(dir, 'disk.img');
  await makeImage(origin, 8 * MiB);
  const mnt = join(dir, 'mnt');
  await fsp.mkdir(mnt);
  const victim = join(dir, 'other-vm.img');
  await makeImage(victim, 3 * MiB + 1000);
  const before = { digest: await digest(victim), stat: await fsp.stat(victim) };

  const r = await mountWith(t, origin, mnt, `diff_storage=${victim},diff_size=8M`);
  t.is(r.code, 32);
  t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  t.regex(r.stderr, /other-vm\.img.*(EEXIST|exists)/);
  t.false(await isMounted(mnt));
  const after = await fsp.stat(victim);
  t.is(await digest(victim), before.digest, 'contents untouched');
  t.is(after.size, before.stat.size, 'size untouched');
  t.is(after.blocks, before.stat.blocks, 'nothing preallocated');

  // A symlink is never followed, whether it points at nothing or at an empty file.
  const empty = join(dir, 'empty.diff');
  await fsp.writeFile(empty, '');
  for (const [name, target] of [['dangling', join(dir, 'nothing-here.diff')], ['to-empty', empty]] as const) {
    const link = join(dir, `${name}.diff`);
    await fsp.symlink(target, link);
    const s = await mountWith(t, origin, mnt, `diff_storage=${link},diff_size=8M`);
    t.is(s.code, 32, name);
    t.regex(s.stderr, /symbolic link/, name);
    t.false(await isMounted(mnt));
  }
  await t.throwsAsync(fsp.stat(join(dir, 'nothing-here.diff')), { code: 'ENOENT' });
  t.is((await fsp.stat(empty)).size, 0);
});

test('defect 5: an empty file, and a file blksnapfs made earlier, are taken (again)', async (t) => {
  const dir = await scratchDir(t);
  const origin = join(dir, 'disk.img');
  await makeImage(origin, 8 * MiB);
  const mnt = join(dir, 'mnt');
  await fsp.mkdir(mnt);
  const diff = join(dir, 'given.diff');
  await fsp.writeFile(diff, '');
  for (const round of [1, 2, 3]) {
    const r = await mountWith(t, origin, mnt, `diff_storage=${diff},diff_size=${round === 3 ? 2 : 4}M`);
    t.is(r.code, 0, `round ${round}: ${r.stderr}`);
    await fsp.mkdir(join(mnt, 'snapshots', 's'));
    await must('dd', ['if=/dev/urandom', `of=${join(mnt, 'origin')}`, 'bs=1M', 'count=1', 'conv=notrunc', 'status=none']);
    const s = JSON.parse(await fsp.readFile(join(mnt, 'status'), 'utf8')) as { diff_storage: DiffStorageStats };
    // A file blksnapfs made keeps the larger size it had.
    t.deepEqual(s.diff_storage.files.map((f) => [f.path, f.size]), [[diff, 4 * MiB]], `round ${round}`);
    await must('umount', [mnt]);
    await daemonGone(mnt);
    // It existed before the mount: it stays, with blksnapfs's mark.
    t.true((await fsp.stat(diff)).size > 4 * MiB, `round ${round}: the file stays`);
  }

  // A file left behind by a daemon that died is blksnapfs's too.
  const left = join(dir, 'left.diff');
  const r = await mountWith(t, origin, mnt, `diff_storage=${left},diff_size=4M`);
  t.is(r.code, 0, r.stderr);
  const pids = await daemonPids(mnt);
  t.true(pids.length > 0);
  for (const pid of pids) process.kill(pid, 'SIGKILL');
  await forceUnmount(mnt);
  t.true((await fsp.stat(left)).size > 0, 'the dead daemon left its file');
  const again = await mountWith(t, origin, mnt, `diff_storage=${left},diff_size=4M`);
  t.is(again.code, 0, again.stderr);
  await must('umount', [mnt]);
  await daemonGone(mnt);
});

/**
 * Abort a mount's FUSE connection: the only way out when its daemon waits for itself
 * (the defect this file guards against). A hung mount blocks every program that stats
 * mount points (mkfs, losetup -a) machine-wide, so a failing test must not leave one.
 */
async function abortConnection(mnt: string): Promise<void> {
  const text = await fsp.readFile('/proc/self/mountinfo', 'utf8');
  const line = text.split('\n').find((l) => l.split(' ')[4] === mnt);
  const minor = line?.split(' ')[2]?.split(':')[1];
  if (minor === undefined) return;
  const abort = `/sys/fs/fuse/connections/${minor}/abort`;
  const mounted = !existsSync(abort);
  if (mounted) await run('mount', ['-t', 'fusectl', 'fusectl', '/sys/fs/fuse/connections']);
  await fsp.writeFile(abort, '1').catch(() => undefined);
  // Leave the machine as it was: fusectl only if it was there before.
  if (mounted) await run('umount', ['/sys/fs/fuse/connections']);
}

test('defect 6: storage-append through a symlink into ext4 on a loop device over MOUNT/origin is EINVAL at once; the mount answers', async (t) => {
  const m = await mountImage(t, { size: 64 * MiB, sparse: true, options: 'diff_size=8M' });
  // Reverse order of teardown: ext4 is unmounted, then the loop device detached, then blksnapfs.
  const loop = await loopDevice(t, m.path('origin'));
  await must('mkfs.ext4', ['-q', '-F', loop]);
  const ext = join(m.dir, 'ext');
  await mountDevice(t, loop, ext);
  const target = join(ext, 'storage.diff');
  await fsp.writeFile(target, ''); // empty: the place is the only thing wrong with it
  const link = join(m.dir, 'link.diff');
  await fsp.symlink(target, link);
  const listingBefore = await fsp.readdir(ext);

  const started = Date.now();
  // A watchdog, not a timeout of the writer: a process stuck in a FUSE request cannot be
  // killed; only aborting the connection frees it (and lets teardown unmount).
  let hung = false;
  const watchdog = setTimeout(() => {
    hung = true;
    void abortConnection(m.mnt);
  }, 5000);
  const r = await run('bash', ['-c', 'echo "storage-append $1 1M" > "$2"', '-', link, m.path('control')]);
  clearTimeout(watchdog);
  const elapsed = Date.now() - started;
  t.false(hung, 'the daemon deadlocked; its connection was aborted');
  if (hung) return;
  t.is(r.code, 1, r.stderr);
  t.regex(r.stderr, /Invalid argument/);
  t.true(elapsed < 2000, `answered in ${elapsed} ms`);
  t.log(`refused in ${elapsed} ms`);
  // The mount still answers, and nothing changed on ext4 or in the storage.
  const s = JSON.parse(await fsp.readFile(m.path('status'), 'utf8')) as { diff_storage: DiffStorageStats };
  t.is(s.diff_storage.files.length, 1);
  t.deepEqual(await fsp.readdir(ext), listingBefore);
  t.is((await fsp.stat(target)).size, 0);
  // The file on ext4, named directly, and a new one beside it: the same answer.
  t.is(await control(m.mnt, `storage-append ${target} 1M`), 'EINVAL');
  t.is(await control(m.mnt, `storage-append ${join(ext, 'new.diff')} 1M`), 'EINVAL');
  await t.throwsAsync(fsp.stat(join(ext, 'new.diff')), { code: 'ENOENT' });
});

test('defect 6: symlinks to the mount\'s own files and a NUL byte in a path are EINVAL', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, options: 'diff_size=4M' });
  const cases: Array<[string, string]> = [];
  for (const name of ['events', 'origin', 'status', 'control']) {
    const link = join(m.dir, `to-${name}`);
    await fsp.symlink(m.path(name), link);
    cases.push([`a symlink to MOUNT/${name}`, `storage-append ${link} 1M`]);
  }
  const dirLink = join(m.dir, 'to-snapshots');
  await fsp.symlink(m.path('snapshots'), dirLink);
  cases.push(['a new file through a symlink to a directory in the mount', `storage-append ${join(dirLink, 'x.diff')} 1M`]);
  cases.push(['a raw NUL byte', `storage-append ${join(m.dir, 'a')}\0b 1M`]);
  cases.push(['a NUL byte in a JSON string', `storage-append "${join(m.dir, 'a')}\\u0000b" 1M`]);
  const before = (await fsp.readdir(m.dir)).sort();
  for (const [what, line] of cases) t.is(await control(m.mnt, line), 'EINVAL', what);
  t.deepEqual((await fsp.readdir(m.dir)).sort(), before, 'nothing created');
  const s = JSON.parse(await fsp.readFile(m.path('status'), 'utf8')) as { diff_storage: DiffStorageStats };
  t.is(s.diff_storage.files.length, 1);
});

test('storage-append never follows a symlink, even to a good empty file (EEXIST, the target untouched)', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, options: 'diff_size=4M' });
  const dir = await scratchDir(t);
  const empty = join(dir, 'empty.diff');
  await fsp.writeFile(empty, '');
  const link = join(m.dir, 'to-empty.diff');
  await fsp.symlink(empty, link);
  t.is(await control(m.mnt, `storage-append ${link} 1M`), 'EEXIST');
  t.is((await fsp.stat(empty)).size, 0);
  t.is(await control(m.mnt, `storage-append ${empty} 1M`), null, 'the file itself is fine');
  t.is((await fsp.stat(empty)).size, 1 * MiB + 4096);
});
