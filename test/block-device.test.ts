/**
 * A block device as the origin: its size comes from the kernel (st_size is 0), it is
 * claimed exclusively while mounted, and /status names it by major:minor and diskseq.
 */
import test from 'ava';
import { promises as fsp, constants as fsc } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { MOUNT_HELPER, MiB, loopDevice, makeImage, mountImage, readRange, run, scratchDir, writeRange } from './helpers/fixture.js';

test('a loop device as the origin: size, identity, exclusivity, snapshots', async (t) => {
  const dir = await scratchDir(t);
  const backing = join(dir, 'backing.img');
  await makeImage(backing, 24 * MiB);
  const dev = await loopDevice(t, backing);
  // cbt_state in the test's own directory, not the default under /var/lib/blksnapfs.
  const m = await mountImage(t, { origin: dev, options: `diff_size=32M,chunk_size=64K,cbt_state=${join(dir, 'state.cbt')}` });

  const status = await m.status();
  const origin = status['origin'] as { kind: string; size: number; rdev: string; diskseq: number | null; path: string };
  t.is(origin.kind, 'block-device');
  t.is(origin.path, dev);
  t.is(origin.size, 24 * MiB, 'size from BLKGETSIZE64, not st_size');
  const sysDev = (await fsp.readFile(`/sys/block/${dev.replace('/dev/', '')}/dev`, 'utf8')).trim();
  t.is(origin.rdev, sysDev);
  const diskseq = await fsp.readFile(`/sys/block/${dev.replace('/dev/', '')}/diskseq`, 'utf8').then((s) => Number(s.trim()), () => null);
  t.is(origin.diskseq, diskseq);
  t.is((await fsp.stat(m.path('origin'))).size, 24 * MiB);

  // Claimed exclusively: another exclusive open (what mount(8) or mkfs does) is refused.
  await t.throwsAsync(() => fsp.open(dev, fsc.O_RDONLY | fsc.O_EXCL), { code: 'EBUSY' });
  const second = await run(process.execPath, [MOUNT_HELPER, dev, join(dir), '-o', `diff_storage=${dir}/2.diff`]);
  t.is(second.code, 32);

  const before = await fsp.readFile(backing);
  await fsp.mkdir(m.path('snapshots', 'dev'));
  await writeRange(m.path('origin'), MiB, randomBytes(4 * MiB));
  t.true((await readRange(m.path('snapshots', 'dev', 'image'), 0, 24 * MiB)).equals(before));
});
