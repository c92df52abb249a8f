/**
 * Lifetimes through a real mount: rmdir while an image is open, name reuse, overflow
 * of a tiny difference storage (the snapshot is lost, the origin never is).
 */
import test from 'ava';
import { promises as fsp, constants as fsc } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { KiB, MiB, mountImage, readRange, writeRange, run } from './helpers/fixture.js';

test('rmdir while the image is open: the descriptor keeps reading old data; the name is reusable', async (t) => {
  const size = 8 * MiB;
  const m = await mountImage(t, { size, options: 'diff_size=32M,chunk_size=64K' });
  const old = await fsp.readFile(m.origin);
  await fsp.mkdir(m.path('snapshots', 'n'));
  const fh = await fsp.open(m.path('snapshots', 'n', 'image'), 'r');
  t.teardown(() => fh.close().catch(() => undefined));
  await fsp.rmdir(m.path('snapshots', 'n'));
  await t.throwsAsync(() => fsp.stat(m.path('snapshots', 'n')), { code: 'ENOENT' });
  t.deepEqual(await fsp.readdir(m.path('snapshots')), []);
  await writeRange(m.path('origin'), 0, randomBytes(size)); // would overwrite everything the open image needs
  const viaOld = Buffer.alloc(size);
  const { bytesRead } = await fh.read(viaOld, 0, size, 0);
  t.is(bytesRead, size);
  t.true(viaOld.equals(old), 'the open descriptor still reads the snapshot');
  const status = await m.status();
  t.true((status['diff_storage'] as { used: number }).used > 0, 'space is held while the image is open');

  await fsp.mkdir(m.path('snapshots', 'n'));
  const current = await fsp.readFile(m.origin);
  t.true((await readRange(m.path('snapshots', 'n', 'image'), 0, size)).equals(current), 'the reused name shows new data');
  const viaOldAgain = Buffer.alloc(4096);
  await fh.read(viaOldAgain, 0, 4096, 0);
  t.true(viaOldAgain.equals(old.subarray(0, 4096)), 'and the old descriptor still the old data');

  await fh.close();
  await fsp.rmdir(m.path('snapshots', 'n'));
  const after = await m.status();
  t.is((after['diff_storage'] as { used: number }).used, 0, 'space released at the last close');
});

test('rmdir while a reader is streaming the image does not disturb the reader', async (t) => {
  const size = 32 * MiB;
  const m = await mountImage(t, { size, options: 'diff_size=64M,chunk_size=64K' });
  const copy = join(m.dir, 'copy.img');
  await fsp.copyFile(m.origin, copy);
  await fsp.mkdir(m.path('snapshots', 'busy'));
  const out = join(m.dir, 'out.img');
  const image = m.path('snapshots', 'busy', 'image');
  // The image is open (exec 3<) before the script marks it so: rmdir comes after the open
  // however loaded the machine is; dd streams from that descriptor across the rmdir.
  const opened = join(m.dir, 'opened');
  const reading = run('bash', ['-c', `exec 3<'${image}'; touch '${opened}'; dd of='${out}' bs=64K status=none <&3`]);
  for (let i = 0; i < 400 && !(await fsp.access(opened).then(() => true, () => false)); i++) {
    await new Promise((r) => setTimeout(r, 25));
  }
  await fsp.rmdir(m.path('snapshots', 'busy'));
  await writeRange(m.path('origin'), 0, randomBytes(size));
  const r = await reading;
  t.is(r.code, 0, r.stderr);
  t.true((await fsp.readFile(out)).equals(await fsp.readFile(copy)));
});

test('overflow of a tiny difference storage: origin writes all land, the snapshot reads EIO', async (t) => {
  const size = 16 * MiB;
  const m = await mountImage(t, { size, options: 'diff_size=256K,chunk_size=64K' });
  await fsp.mkdir(m.path('snapshots', 'tiny'));
  const data = randomBytes(8 * MiB);
  await writeRange(m.path('origin'), 0, data); // needs 128 chunks; the storage holds 4
  t.true((await fsp.readFile(m.origin)).subarray(0, 8 * MiB).equals(data), 'every origin write landed');
  const info = await m.info('tiny');
  t.is(info['state'], 'corrupted');
  t.is(info['error'], 'ENOSPC');
  await t.throwsAsync(() => readRange(m.path('snapshots', 'tiny', 'image'), 0, 4096), { code: 'EIO' });
  // The mount goes on: a new snapshot after destroying the lost one works.
  await fsp.rmdir(m.path('snapshots', 'tiny'));
  const now = await fsp.readFile(m.origin);
  await fsp.mkdir(m.path('snapshots', 'again'));
  await writeRange(m.path('origin'), 0, randomBytes(64 * KiB));
  t.true((await readRange(m.path('snapshots', 'again', 'image'), 0, size)).equals(now));
});

test('range checks on /origin and images behave like a block device', async (t) => {
  const size = 4 * MiB;
  const m = await mountImage(t, { size, options: 'diff_size=16M' });
  const origin = m.path('origin');
  const fh = await fsp.open(origin, fsc.O_RDWR);
  t.teardown(() => fh.close().catch(() => undefined));
  await t.throwsAsync(() => fh.write(Buffer.alloc(10), 0, 10, size), { code: 'ENOSPC' });
  await t.throwsAsync(() => fh.write(Buffer.alloc(10), 0, 10, size + 4096), { code: 'ENOSPC' });
  const straddle = await fh.write(Buffer.alloc(100, 7), 0, 100, size - 40);
  t.is(straddle.bytesWritten, 40, 'a write across the end is cut short');
  t.is((await fh.read(Buffer.alloc(100), 0, 100, size - 10)).bytesRead, 10);
  t.is((await fh.read(Buffer.alloc(100), 0, 100, size + 10)).bytesRead, 0);
  await t.throwsAsync(() => fsp.truncate(origin, size + 4096), { code: 'EPERM' });
  await t.throwsAsync(() => fsp.truncate(origin, 0), { code: 'EPERM' });
  await fsp.truncate(origin, size); // same size: allowed, changes nothing
  t.is((await fsp.stat(origin)).size, size);
  t.is((await fsp.stat(m.origin)).size, size, 'the origin file never grew');

  await fsp.mkdir(m.path('snapshots', 'r'));
  const image = m.path('snapshots', 'r', 'image');
  t.is((await fsp.stat(image)).size, size);
  await t.throwsAsync(() => fsp.truncate(image, 0), { code: 'EPERM' }, 'an image is writable, but its size is fixed');
  t.is((await readRange(image, size - 10, 100)).length, 10);
  t.is((await readRange(image, size + 1, 100)).length, 0);
  await t.throwsAsync(() => fsp.writeFile(m.path('newfile'), 'x'), { code: 'EPERM' });
  await t.throwsAsync(() => fsp.unlink(origin), { code: 'EPERM' });
  await t.throwsAsync(() => fsp.rename(m.path('snapshots', 'r'), m.path('snapshots', 's')), { code: 'EPERM' });
  await t.throwsAsync(() => fsp.mkdir(m.path('elsewhere')), { code: 'EPERM' });
  for (const bad of ['.dot', '-dash', 'x'.repeat(65), 'a b']) {
    await t.throwsAsync(() => fsp.mkdir(m.path('snapshots', bad)), { code: 'EINVAL' }, bad);
  }
  await t.throwsAsync(() => fsp.mkdir(m.path('snapshots', 'r')), { code: 'EEXIST' });
  await t.throwsAsync(() => fsp.rmdir(m.path('snapshots', 'nope')), { code: 'ENOENT' });
});
