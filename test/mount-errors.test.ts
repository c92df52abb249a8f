/**
 * Bad input gets one clear error line, the documented exit status, nothing mounted and
 * nothing created.
 */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { MOUNT_HELPER, MiB, isMounted, makeImage, mountImage, run, scratchDir } from './helpers/fixture.js';

interface Case {
  title: string;
  origin: (dir: string) => string;
  mnt?: (dir: string) => string;
  options: (dir: string) => string;
  status: number;
  message: RegExp;
}

const cases: Case[] = [
  { title: 'missing origin', origin: (d) => join(d, 'nope.img'), options: () => '', status: 32, message: /nope\.img.*(ENOENT|no such file)/i },
  { title: 'origin is a directory', origin: (d) => d, options: () => '', status: 32, message: /is a directory/ },
  { title: 'unknown option', origin: (d) => join(d, 'disk.img'), options: () => 'frobnicate=1', status: 1, message: /unknown option "frobnicate"/ },
  { title: 'chunk_size not a power of two', origin: (d) => join(d, 'disk.img'), options: () => 'chunk_size=48K', status: 1, message: /chunk_size must be a power of two/ },
  { title: 'chunk_size below 4K', origin: (d) => join(d, 'disk.img'), options: () => 'chunk_size=2K', status: 1, message: /chunk_size must be a power of two of at least 4K/ },
  { title: 'bad size', origin: (d) => join(d, 'disk.img'), options: () => 'diff_size=lots', status: 1, message: /bad size "lots"/ },
  { title: 'unwritable difference storage path', origin: (d) => join(d, 'disk.img'), options: () => 'diff_storage=/proc/blksnapfs-test.diff', status: 32, message: /difference storage/ },
  { title: 'difference storage in a missing directory', origin: (d) => join(d, 'disk.img'), options: (d) => `diff_storage=${d}/no/such/dir/x.diff`, status: 32, message: /difference storage directory/ },
  { title: 'difference storage inside the mount point', origin: (d) => join(d, 'disk.img'), options: (d) => `diff_storage=${d}/mnt/x.diff`, status: 32, message: /inside the mount/ },
  { title: 'difference storage is the origin', origin: (d) => join(d, 'disk.img'), options: (d) => `diff_storage=${d}/disk.img`, status: 32, message: /is the origin itself/ },
  { title: 'missing mount point', origin: (d) => join(d, 'disk.img'), mnt: (d) => join(d, 'nomnt'), options: () => '', status: 32, message: /mount point .*nomnt/ },
  { title: 'mount point is a file', origin: (d) => join(d, 'disk.img'), mnt: (d) => join(d, 'disk.img'), options: () => '', status: 32, message: /not a directory/ },
];

for (const c of cases) {
  test(`refused: ${c.title}`, async (t) => {
    const dir = await scratchDir(t);
    await makeImage(join(dir, 'disk.img'), 4 * MiB);
    await fsp.mkdir(join(dir, 'mnt'));
    const before = (await fsp.readdir(dir)).sort();
    const mnt = c.mnt ? c.mnt(dir) : join(dir, 'mnt');
    const opts = c.options(dir);
    const r = await run(process.execPath, [MOUNT_HELPER, c.origin(dir), mnt, ...(opts ? ['-o', opts] : [])]);
    t.is(r.code, c.status, r.stderr);
    const lines = r.stderr.trim().split('\n');
    t.is(lines.length, 1, `one line: ${r.stderr}`);
    t.regex(lines[0] ?? '', /^mount\.blksnapfs: /);
    t.regex(r.stderr, c.message);
    t.false(await isMounted(join(dir, 'mnt')), 'nothing mounted');
    t.deepEqual((await fsp.readdir(dir)).sort(), before, 'nothing created');
    t.deepEqual(await fsp.readdir(join(dir, 'mnt')), []);
  });
}

test('the same origin cannot be mounted twice at once', async (t) => {
  const m = await mountImage(t, { size: 4 * MiB });
  const other = join(m.dir, 'mnt2');
  await fsp.mkdir(other);
  const r = await run(process.execPath, [MOUNT_HELPER, m.origin, other, '-o', `diff_storage=${m.dir}/other.diff`]);
  t.is(r.code, 32);
  t.regex(r.stderr, /already mounted/);
  t.false(await isMounted(other));
  await t.throwsAsync(() => fsp.stat(join(m.dir, 'other.diff')), { code: 'ENOENT' });
  t.truthy(await m.status(), 'the first mount is untouched');
});

test('a mount point that is already mounted is refused', async (t) => {
  const m = await mountImage(t, { size: 4 * MiB });
  const img2 = join(m.dir, 'second.img');
  await makeImage(img2, 4 * MiB);
  const r = await run(process.execPath, [MOUNT_HELPER, img2, m.mnt, '-o', `diff_storage=${m.dir}/second.diff`]);
  t.is(r.code, 32);
  t.regex(r.stderr, /already a mount point/);
});

test('usage errors exit 1 with one line', async (t) => {
  const r = await run(process.execPath, [MOUNT_HELPER, 'only-one-arg']);
  t.is(r.code, 1);
  t.regex(r.stderr, /usage: mount\.blksnapfs/);
});
