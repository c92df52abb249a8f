/**
 * A log that cannot be written (issue 9, defect 1), on real mounts: `-o log=` on a small
 * tmpfs that is then filled up. Every log call used to throw inside the daemon's
 * critical sections: mkdir failed yet the snapshot existed, rmdir failed yet the name
 * was gone, an origin write failed at the first low-space crossing, and a storage growth
 * rejected unhandled and took the daemon down. With a full log everything must behave
 * as with a working one: one `log-failed` event, the daemon up, `umount` working.
 */
import test, { type ExecutionContext } from 'ava';
import { promises as fsp } from 'node:fs';
import { dirname, join } from 'node:path';
import { MiB, daemonPids, isMounted, mountImage, must, readRange, run, scratchDir, type Mounted } from './helpers/fixture.js';
import { EventTail, sleep } from './helpers/events.js';

/** A 64 KiB tmpfs for the log, unmounted at teardown (after the mount that logs to it). */
async function smallFileSystem(t: ExecutionContext): Promise<string> {
  const dir = join(await scratchDir(t), 'logfs');
  await fsp.mkdir(dir);
  await must('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0755', 'tmpfs', dir]);
  t.teardown(async () => {
    if ((await run('umount', [dir])).code !== 0) await run('umount', ['-l', dir]);
  });
  return dir;
}

/** Fill the file system holding `log` until it has no byte left, the log's last page included. */
async function fill(log: string): Promise<void> {
  const dir = dirname(log);
  await run('dd', ['if=/dev/zero', `of=${join(dir, 'filler')}`, 'bs=4k', 'status=none']); // ends with ENOSPC
  // A file's last page has room until it is full: pad the log with empty lines up to it.
  await run('bash', ['-c', 'yes "" | dd of="$1" oflag=append conv=notrunc bs=1 status=none', 'pad', log]);
}

async function writeOrigin(m: Mounted, atMiB: number, data: Buffer): Promise<void> {
  const fh = await fsp.open(m.path('origin'), 'r+');
  try {
    await fh.write(data, 0, data.length, atMiB * MiB);
  } finally {
    await fh.close();
  }
}

async function storageUsed(m: Mounted): Promise<number> {
  return ((await m.status())['diff_storage'] as { used: number }).used;
}

async function stillServing(t: ExecutionContext, m: Mounted): Promise<void> {
  t.true(await isMounted(m.mnt), 'still mounted');
  t.is((await daemonPids(m.mnt)).length, 1, 'the daemon is up');
}

/** umount(8) works (once the events reader is gone) and the daemon goes away by itself. */
async function unmountCleanly(t: ExecutionContext, m: Mounted, tail: EventTail): Promise<void> {
  tail.child.kill('SIGKILL');
  await tail.exited;
  const r = await run('umount', [m.mnt]);
  t.is(r.code, 0, r.stderr);
  for (let i = 0; i < 100 && (await daemonPids(m.mnt)).length > 0; i++) await sleep(100);
  t.deepEqual(await daemonPids(m.mnt), [], 'the daemon exited after umount');
  t.false(await isMounted(m.mnt));
}

test('a full log: snapshots come and go, low space and overflow behave, the daemon stays up, umount works', async (t) => {
  const logfs = await smallFileSystem(t);
  const log = join(logfs, 'daemon.log');
  const m = await mountImage(t, { size: 16 * MiB, options: `log=${log},log_level=debug,diff_size=2M,diff_threshold=1M,chunk_size=64K` });
  await fill(log);
  const tail = new EventTail(t, m.mnt);

  // Take and destroy, again and again: each mkdir and rmdir succeeds and frees what it held.
  for (let i = 0; i < 20; i++) {
    await fsp.mkdir(m.path('snapshots', `s${i}`));
    await writeOrigin(m, i % 8, Buffer.alloc(256 * 1024, i));
    await fsp.rmdir(m.path('snapshots', `s${i}`));
  }
  t.deepEqual(await fsp.readdir(m.path('snapshots')), []);
  t.is(await storageUsed(m), 0, 'every rmdir freed its space');

  // A low-space crossing: the origin write succeeds, the snapshot stays exact.
  const expected = await fsp.readFile(m.origin);
  await fsp.mkdir(m.path('snapshots', 'keep'));
  const crossing = Buffer.alloc(1536 * 1024, 0xa5); // 24 chunks of 32: below the 1M threshold
  await writeOrigin(m, 0, crossing);
  await tail.waitType('low-free-space');
  t.is((await m.info('keep'))['state'], 'ok');
  t.true((await readRange(m.path('snapshots', 'keep', 'image'), 0, expected.length)).equals(expected), 'the image is the point in time');

  // Overflow: the snapshot is corrupted, every origin write lands.
  const more = Buffer.alloc(4 * MiB, 0x5a);
  await writeOrigin(m, 4, more);
  t.is((await m.info('keep'))['state'], 'corrupted');
  const origin = await fsp.readFile(m.origin);
  t.true(origin.subarray(0, crossing.length).equals(crossing) && origin.subarray(4 * MiB, 8 * MiB).equals(more), 'origin writes landed');

  await fsp.mkdir(m.path('snapshots', 'marker'));
  await tail.waitType('snapshot-taken', 'marker');
  const failed = tail.of('log-failed');
  t.is(failed.length, 1, 'the failing log is reported once');
  t.like(failed[0], { error: 'ENOSPC' });
  t.is(tail.of('corrupted').length, 1);
  await stillServing(t, m);

  // Room again: logging resumes, and the log says how much it lost.
  await fsp.rm(join(logfs, 'filler'));
  await fsp.rmdir(m.path('snapshots', 'marker'));
  t.regex(await fsp.readFile(log, 'utf8'), /"lost":\d+,"msg":"log lines lost"/);
  await unmountCleanly(t, m, tail);
});

test('a full log with diff_limit: growth reports cannot reject, the write that needed the space lands, the daemon stays up', async (t) => {
  const logfs = await smallFileSystem(t);
  const log = join(logfs, 'daemon.log');
  const m = await mountImage(t, { size: 16 * MiB, options: `log=${log},diff_size=1M,diff_threshold=512K,diff_grow=512K,diff_limit=2M,chunk_size=64K` });
  await fill(log);
  const tail = new EventTail(t, m.mnt);
  await fsp.mkdir(m.path('snapshots', 'a'));
  const data = Buffer.alloc(4 * MiB, 0x3c); // 64 chunks to save; the storage may grow to 32
  await writeOrigin(m, 0, data);
  t.true((await readRange(m.origin, 0, data.length)).equals(data), 'the origin write landed');
  t.is((await m.info('a'))['state'], 'corrupted');
  await fsp.mkdir(m.path('snapshots', 'marker'));
  await tail.waitType('snapshot-taken', 'marker');
  t.true(tail.of('storage-grown').length >= 1, 'the storage grew up to its limit');
  t.is(tail.of('log-failed').length, 1);
  await stillServing(t, m);
  await unmountCleanly(t, m, tail);
});
