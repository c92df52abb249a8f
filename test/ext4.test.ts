/**
 * The real use: a live ext4 on a loop device over /origin, written while snapshots are
 * taken; the snapshot image loop-mounted read-only (noload) and its files rsynced out.
 */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { MiB, loopDevice, makeImage, mountDevice, mountImage, must, sh } from './helpers/fixture.js';

test('ext4 over /origin: snapshots taken during writes mount read-only and rsync out intact', async (t) => {
  const dir = join('/var/tmp', 'blksnapfs-tests');
  await fsp.mkdir(dir, { recursive: true });
  const origin = join(await fsp.mkdtemp(join(dir, 'ext4-')), 'fs.img');
  t.teardown(() => fsp.rm(join(origin, '..'), { recursive: true, force: true }));
  await makeImage(origin, 256 * MiB, { sparse: true });
  await must('mkfs.ext4', ['-q', '-F', origin]);
  const m = await mountImage(t, { origin, options: 'diff_size=256M,chunk_size=64K' });

  const live = await loopDevice(t, m.path('origin'));
  const fsDir = join(m.dir, 'live');
  await mountDevice(t, live, fsDir);
  // Round one: files that will be in the first snapshot, flushed before it.
  await sh(`for i in $(seq 1 8); do head -c 3M /dev/urandom > ${fsDir}/a$i; done; mkdir ${fsDir}/tree; cp -r ${join(process.cwd(), 'src')} ${fsDir}/tree/; sync -f ${fsDir}`);
  await sh(`cd ${fsDir} && sha256sum a* > ${m.dir}/first.sha && find tree -type f -exec sha256sum {} + > ${m.dir}/tree.sha`);
  // Freeze the file system for a clean point in time, as a backup script would.
  await must('fsfreeze', ['-f', fsDir]);
  try {
    await fsp.mkdir(m.path('snapshots', 'one'));
  } finally {
    await must('fsfreeze', ['-u', fsDir]);
  }
  // Keep writing while a second snapshot is taken unfrozen (crash-consistent).
  const writing = sh(`for i in $(seq 1 10); do head -c 2M /dev/urandom > ${fsDir}/b$i; rm -f ${fsDir}/a$((i % 8 + 1)); done; sync -f ${fsDir}`);
  await new Promise((r) => setTimeout(r, 100));
  await fsp.mkdir(m.path('snapshots', 'two'));
  await writing;

  const snapDev = await loopDevice(t, m.path('snapshots', 'one', 'image'), true);
  const snapDir = join(m.dir, 'snap');
  await mountDevice(t, snapDev, snapDir, ['-o', 'ro,noload']);
  const out = join(m.dir, 'out');
  await sh(`rsync -a ${snapDir}/ ${out}/ && cd ${out} && sha256sum -c --quiet ${m.dir}/first.sha && sha256sum -c --quiet ${m.dir}/tree.sha`);
  t.pass('snapshot one: every file rsynced out matches');

  // The crash-consistent one must at least be a clean-enough ext4 to check and mount.
  const twoDev = await loopDevice(t, m.path('snapshots', 'two', 'image'), true);
  const fsck = await sh(`e2fsck -fn ${twoDev} >/dev/null 2>&1; echo $?`);
  t.true(Number(fsck.trim()) <= 4, `e2fsck on the crash-consistent snapshot: ${fsck}`);
  const twoDir = join(m.dir, 'snap2');
  await mountDevice(t, twoDev, twoDir, ['-o', 'ro,noload']);
  t.true((await fsp.readdir(twoDir)).includes('tree'));
  await sh(`umount ${fsDir} && e2fsck -fn ${live}`);
});
