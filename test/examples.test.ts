/** The example scripts users copy from, run for real against a mount. */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { MiB, ROOT, loopDevice, mountDevice, mountImage, must, sh, makeImage } from './helpers/fixture.js';

test('full-backup-dd.sh and full-backup-tar.sh produce the point-in-time image', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, options: 'diff_size=32M' });
  const copy = join(m.dir, 'copy.img');
  await fsp.copyFile(m.origin, copy);
  await must('bash', [join(ROOT, 'examples/full-backup-dd.sh'), m.mnt, join(m.dir, 'dd.img')]);
  await sh(`cmp ${m.dir}/dd.img ${copy}`);
  await must('bash', [join(ROOT, 'examples/full-backup-tar.sh'), m.mnt, join(m.dir, 'b.tar.gz')]);
  await sh(`mkdir ${m.dir}/x && tar -C ${m.dir}/x -xzf ${m.dir}/b.tar.gz && cmp ${m.dir}/x/image ${copy}`);
  t.deepEqual(await fsp.readdir(m.path('snapshots')), [], 'the scripts release their snapshots');
});

test('rsync-files-from-snapshot.sh copies the files of a live ext4 out of a snapshot', async (t) => {
  const dir = await fsp.mkdtemp('/var/tmp/blksnapfs-tests/ex-');
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  const origin = join(dir, 'fs.img');
  await makeImage(origin, 64 * MiB, { sparse: true });
  await must('mkfs.ext4', ['-q', '-F', origin]);
  const m = await mountImage(t, { origin, options: 'diff_size=64M' });
  const live = join(m.dir, 'live');
  await mountDevice(t, await loopDevice(t, m.path('origin')), live);
  await sh(`mkdir ${live}/docs && head -c 1M /dev/urandom > ${live}/docs/a && echo hello > ${live}/b && sync -f ${live}`);
  const dest = join(m.dir, 'dest');
  await must('bash', [join(ROOT, 'examples/rsync-files-from-snapshot.sh'), m.mnt, dest]);
  await sh(`cmp ${live}/docs/a ${dest}/docs/a && cmp ${live}/b ${dest}/b`);
  t.deepEqual(await fsp.readdir(m.path('snapshots')), []);
});
