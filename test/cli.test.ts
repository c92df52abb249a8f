/**
 * The command-line surface: mount(8) through the helper, blksnapfs with long options,
 * snapshot take/list/destroy, status --json, umount (refused while busy; waits for the
 * daemon), --help.
 */
import test, { type ExecutionContext } from 'ava';
import { promises as fsp, existsSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, MiB, background, forceUnmount, isMounted, loopDevice, makeImage, run, scratchDir } from './helpers/fixture.js';

async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return run(process.execPath, [CLI, ...args]);
}

/** An origin image and an empty mount point, unmounted at teardown; not yet mounted. */
async function unmountedOrigin(t: ExecutionContext, size: number): Promise<{ dir: string; origin: string; mnt: string }> {
  const dir = await scratchDir(t);
  const origin = join(dir, 'disk.img');
  await makeImage(origin, size);
  const mnt = join(dir, 'mnt');
  await fsp.mkdir(mnt);
  t.teardown(() => forceUnmount(mnt));
  return { dir, origin, mnt };
}

test('mount -t blksnapfs runs the helper; fsname and type show in /proc/mounts', async (t) => {
  if (!existsSync('/usr/sbin/mount.blksnapfs') && !existsSync('/sbin/mount.blksnapfs')) {
    t.fail('mount.blksnapfs is not installed in /usr/sbin: run npm run setup');
    return;
  }
  const { dir, origin, mnt } = await unmountedOrigin(t, 8 * MiB);
  const r = await run('mount', ['-t', 'blksnapfs', origin, mnt, '-o', `diff_storage=${dir}/d.diff,diff_size=16M,noatime,nofail,x-systemd.automount`]);
  t.is(r.code, 0, r.stderr);
  const mounts = await fsp.readFile('/proc/mounts', 'utf8');
  t.true(mounts.split('\n').some((l) => l.startsWith(`${origin} ${mnt} fuse.blksnapfs `)), mounts);
  const u = await run('umount', [mnt]);
  t.is(u.code, 0, u.stderr);
  for (let i = 0; i < 50 && existsSync(join(dir, 'd.diff')); i++) await new Promise((res) => setTimeout(res, 100));
  t.false(existsSync(join(dir, 'd.diff')), 'the difference storage the daemon created is removed at unmount');
});

test('blksnapfs mount with long options, snapshot take/list/destroy, status, umount', async (t) => {
  const { dir, origin, mnt } = await unmountedOrigin(t, 8 * MiB);
  const m = await cli('mount', origin, mnt, '--diff-storage', join(dir, 'x.diff'), '--diff-size', '16M', '--chunk-size', '64K');
  t.is(m.code, 0, m.stderr);

  const take = await cli('snapshot', 'take', mnt, 'daily', '--json');
  t.is(take.code, 0, take.stderr);
  const info = JSON.parse(take.stdout) as { name: string; chunk_size: number; state: string };
  t.is(info.name, 'daily');
  t.is(info.chunk_size, 65536);
  t.is(info.state, 'ok');
  const dup = await cli('snapshot', 'take', mnt, 'daily');
  t.not(dup.code, 0);
  t.is(dup.stderr.trim().split('\n').length, 1);
  t.regex(dup.stderr, /exists/i);
  const bad = await cli('snapshot', 'take', mnt, '../x');
  t.not(bad.code, 0);

  const list = await cli('snapshot', 'list', mnt, '--json');
  t.deepEqual((JSON.parse(list.stdout) as Array<{ name: string }>).map((s) => s.name), ['daily']);
  const status = await cli('status', mnt, '--json');
  const s = JSON.parse(status.stdout) as { origin: { path: string; size: number; ino: number; dev: string }; chunk_size: number };
  t.is(s.origin.path, origin);
  t.is(s.origin.size, 8 * MiB);
  t.is(s.origin.ino, (await fsp.stat(origin)).ino, 'status names the inode it holds');
  t.regex(s.origin.dev, /^\d+:\d+$/);
  const human = await cli('status', mnt);
  t.regex(human.stdout, /snapshots\s+daily/);

  const loop = await loopDevice(t, join(mnt, 'origin'));
  const busy = await cli('umount', mnt);
  t.not(busy.code, 0, 'refused while a loop device uses the origin');
  t.regex(busy.stderr, /busy/i);
  t.true(await isMounted(mnt));
  await run('losetup', ['-d', loop]);

  t.is((await cli('snapshot', 'destroy', mnt, 'daily')).code, 0);
  const u = await cli('umount', mnt);
  t.is(u.code, 0, u.stderr);
  t.false(await isMounted(mnt));
  t.false(existsSync(join(dir, 'x.diff')), 'daemon finished closing before umount returned');
});

test('--help lists every command; errors are one line', async (t) => {
  const help = await cli('--help');
  t.is(help.code, 0);
  for (const c of ['mount', 'umount', 'snapshot', 'status', 'events', 'storage', 'cbt']) t.regex(help.stdout, new RegExp(`\\b${c}\\b`));
  const mountHelp = await cli('mount', '--help');
  t.regex(mountHelp.stdout, /--diff-size/);
  t.regex(mountHelp.stdout, /--chunk-size/);
  const snap = await cli('snapshot', '--help');
  t.regex(snap.stdout, /take/);
  const missing = await cli('status', '/nonexistent-mount');
  t.not(missing.code, 0);
  t.is(missing.stderr.trim().split('\n').length, 1);
  t.regex(missing.stderr, /^blksnapfs: /);
});

test('-o ro: the origin cannot be written through the mount', async (t) => {
  const { dir, origin, mnt } = await unmountedOrigin(t, 4 * MiB);
  const r = await run(process.execPath, [join(CLI, '..', 'mount.blksnapfs.js'), origin, mnt, '-o', `ro,diff_storage=${dir}/d.diff,diff_size=8M`]);
  t.is(r.code, 0, r.stderr);
  await t.throwsAsync(() => fsp.open(join(mnt, 'origin'), 'r+'), { code: 'EROFS' });
  t.is((await fsp.stat(join(mnt, 'origin'))).mode & 0o222, 0);
  await fsp.mkdir(join(mnt, 'snapshots', 'still-works'));
  t.is((await fsp.readFile(join(mnt, 'snapshots', 'still-works', 'image'))).length, 4 * MiB);
});

test('-o foreground: stays in front, logs JSON to stderr, exits 0 once unmounted', async (t) => {
  const { dir, origin, mnt } = await unmountedOrigin(t, 4 * MiB);
  const child = background(t, process.execPath, [join(CLI, '..', 'mount.blksnapfs.js'), origin, mnt, '-o', `foreground,diff_storage=${dir}/d.diff,diff_size=8M`]);
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  for (let i = 0; i < 100 && !(await isMounted(mnt)); i++) await new Promise((r) => setTimeout(r, 50));
  t.true(await isMounted(mnt));
  await fsp.mkdir(join(mnt, 'snapshots', 'fg'));
  t.is((await run('umount', [mnt])).code, 0);
  t.is(await exited, 0);
  const lines = stderr.trim().split('\n').map((l) => JSON.parse(l) as { msg?: string; level?: number });
  t.true(lines.some((l) => l.msg === 'mounted'), stderr);
  t.true(lines.some((l) => l.msg === 'snapshot taken'));
});
