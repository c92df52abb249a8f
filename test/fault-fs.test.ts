/**
 * The fault-injection file system itself (test/helpers/fault-fs.ts), without blksnapfs:
 * data passes through to ext4; reads, writes and fallocates fail exactly where and
 * when they are told to, and heal; what the daemon needs from it (O_DIRECT opens,
 * fallocate, flock) works; and it leaves no mount behind even when killed.
 */
import test from 'ava';
import { constants as fsc, promises as fsp } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { KiB, isMounted } from './helpers/fixture.js';
import { startFaultFs } from './helpers/fault-fs.js';
import { allocAligned } from '../src/storage/aligned.js';
import { fallocateAsync, tryLockExclusive, unlock } from '../src/storage/native.js';

async function errnoOf(work: Promise<unknown>): Promise<string | null> {
  try {
    await work;
    return null;
  } catch (err) {
    return (err as { code?: string }).code ?? String(err);
  }
}

test('data passes through; reads and writes fail in the range and after the bytes they are told, until healed', async (t) => {
  const ffs = await startFaultFs(t);
  const data = randomBytes(256 * KiB);
  await fsp.writeFile(ffs.path('f'), data);
  t.true((await fsp.readFile(ffs.backingPath('f'))).equals(data), 'written through to ext4');

  const fh = await fsp.open(ffs.path('f'), 'r+');
  t.teardown(() => fh.close());
  const buf = Buffer.alloc(64 * KiB);
  await ffs.fail({ file: 'f', op: 'read', errno: 'EIO', from: 100 * KiB, to: 101 * KiB });
  t.is(await errnoOf(fh.read(buf, 0, 64 * KiB, 64 * KiB)), 'EIO', 'a read overlapping the range fails');
  t.is(await errnoOf(fh.read(buf, 0, 64 * KiB, 0)), null, 'a read beside it succeeds');

  await ffs.fail({ file: '/f', op: 'write', errno: 'ENOSPC', afterBytes: 8 * KiB });
  t.is(await errnoOf(fh.write(randomBytes(8 * KiB), 0, 8 * KiB, 0)), null, 'the first 8 KiB go through');
  const refused = randomBytes(4 * KiB);
  t.is(await errnoOf(fh.write(refused, 0, 4 * KiB, 16 * KiB)), 'ENOSPC', 'then writes fail');
  t.is(await errnoOf(fh.write(refused, 0, 4 * KiB, 32 * KiB)), 'ENOSPC', 'and keep failing');
  t.true((await fsp.readFile(ffs.backingPath('f'))).subarray(16 * KiB, 20 * KiB).equals(data.subarray(16 * KiB, 20 * KiB)),
    'a failed write writes nothing');
  t.is(await ffs.fired(), 3);

  await ffs.heal();
  t.is(await errnoOf(fh.write(refused, 0, 4 * KiB, 16 * KiB)), null, 'healed');
  t.is(await errnoOf(fh.read(buf, 0, 64 * KiB, 64 * KiB)), null);
});

test('what the daemon needs works: O_DIRECT opens and I/O, fallocate (and its faults), flock; delays hold a request', async (t) => {
  const ffs = await startFaultFs(t);
  const fh = await fsp.open(ffs.path('d.diff'), fsc.O_RDWR | fsc.O_DIRECT | fsc.O_CREAT | fsc.O_EXCL, 0o600);
  t.teardown(() => fh.close());
  t.true(tryLockExclusive(fh.fd), 'flock');
  await fallocateAsync(fh.fd, 0, 1024 * KiB);
  t.is((await fsp.stat(ffs.backingPath('d.diff'))).size, 1024 * KiB, 'fallocate reaches the backing file');
  const block = allocAligned(64 * KiB).fill(7);
  await fh.write(block, 0, block.length, 64 * KiB);
  await ffs.fail({ file: 'd.diff', op: 'fallocate', errno: 'ENOSPC' });
  await t.throwsAsync(() => fallocateAsync(fh.fd, 0, 2048 * KiB), { message: /ENOSPC/ });
  await ffs.heal();
  await ffs.fail({ file: 'd.diff', op: 'read', delayMs: 500 });
  const started = Date.now();
  await fh.read(block, 0, block.length, 64 * KiB);
  t.true(Date.now() - started >= 450, 'the read was held back');
  t.is(block[0], 7);
  unlock(fh.fd);
});

test('killed outright, it leaves no mount behind', async (t) => {
  const ffs = await startFaultFs(t);
  t.true(await isMounted(ffs.mnt));
  if (ffs.pid !== undefined) process.kill(ffs.pid, 'SIGKILL');
  for (let i = 0; i < 50 && (await isMounted(ffs.mnt)); i++) await new Promise((r) => setTimeout(r, 100));
  t.false(await isMounted(ffs.mnt), 'auto_unmount cleaned up');
});
