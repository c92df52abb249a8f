/**
 * No starvation (issue 15): however many requests wait, other users' requests, root's,
 * thaw, mkdir and unmount go on. Waiting requests hold no capacity others need: slots
 * grow, a waiting read holds no buffer, a held write's payload is copied out of the
 * receive buffer when those run short.
 */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MiB, ROOT, background, daemonPids, mountImage, must, readRange, run, type Mounted } from './helpers/fixture.js';

const PARKER_SOURCE = join(ROOT, 'test', 'helpers', 'park-readers.c');
const WRITER = fileURLToPath(new URL('./helpers/region-writer.js', import.meta.url));

async function inFlight(m: Mounted): Promise<number> {
  return ((await m.status())['transport'] as { in_flight: number }).in_flight;
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`gave up waiting: ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Run `work` and return how long it took, in ms. */
async function timed(work: () => Promise<unknown>): Promise<number> {
  const start = process.hrtime.bigint();
  await work();
  return Number(process.hrtime.bigint() - start) / 1e6;
}

test('9000 /events readers parked by nobody: root reads, writes, takes, destroys and unmounts meanwhile', async (t) => {
  const m = await mountImage(t, { size: 64 * MiB, options: 'diff_size=64M,allow_other' });
  await fsp.chmod(m.origin, 0o644); // every local user may read the origin, so /events too
  await fsp.chmod(m.dir, 0o755); // and reach the mount point
  const parkerBinary = join(m.dir, 'park-readers');
  await must('gcc', ['-O2', '-pthread', '-o', parkerBinary, PARKER_SOURCE]);
  const parker = background(t, 'setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', parkerBinary, m.path('events'), '9000']);
  let out = '';
  parker.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  const t0 = Date.now();
  await until('the readers to open /events', () => Promise.resolve(out.includes('parked') || parker.exitCode !== null), 180_000);
  t.log(`opened in ${Date.now() - t0} ms`);
  t.regex(out, /parked 9000 refused 0/);
  await until('9000 reads to wait in the daemon', async () => (await inFlight(m)) >= 9000, 180_000);
  t.log(`parked in ${Date.now() - t0} ms`);

  // Root's requests, each of a different kind, all answered.
  t.truthy((await m.status())['origin'], '/status');
  await must('dd', ['if=/dev/urandom', `of=${m.path('origin')}`, 'bs=1M', 'count=2', 'oflag=direct', 'conv=notrunc', 'status=none']);
  const before = await readRange(m.path('origin'), 0, 4 * MiB);
  await fsp.mkdir(m.path('snapshots', 'busy'));
  await must('dd', ['if=/dev/urandom', `of=${m.path('origin')}`, 'bs=1M', 'count=4', 'oflag=direct', 'conv=notrunc', 'status=none']);
  t.true((await readRange(m.path('snapshots', 'busy', 'image'), 0, 4 * MiB)).equals(before), 'the image keeps the point in time');
  await fsp.rmdir(m.path('snapshots', 'busy'));
  // The events of the take and the destroy woke every reader; each parks again.
  t.is(parker.exitCode, null, 'the readers are still there');
  await until('the readers to park again', async () => (await inFlight(m)) >= 9000, 180_000);
  t.log(`parked again at ${Date.now() - t0} ms`);

  // Unmount with 9000 files open: lazily, then the daemon ends when they are closed.
  const [pid] = await daemonPids(m.mnt);
  await must('umount', ['-l', m.mnt]);
  parker.kill('SIGKILL');
  await until('the daemon to exit after the last reader went', async () => pid === undefined || (await run('kill', ['-0', String(pid)])).code !== 0, 120_000);
  t.log(`daemon gone at ${Date.now() - t0} ms`);
  t.pass();
});

test('a freeze under fio qd128 and 16 synchronous writers: mkdir and thaw each return within 3 s', async (t) => {
  const size = 256 * MiB;
  const m = await mountImage(t, { size, sparse: true, options: 'diff_size=256M,chunk_size=64K' });
  await fsp.writeFile(m.path('control'), 'freeze 60000\n');
  background(t, 'fio', ['--name=storm', `--filename=${m.path('origin')}`, '--rw=randwrite', '--bs=64k', '--iodepth=128', '--ioengine=libaio',
    '--direct=1', `--size=${size / 2}`, '--time_based', '--runtime=30', '--output=/dev/null']);
  const region = size / 2 / 16;
  const writers = Array.from({ length: 16 }, (_, i) =>
    background(t, process.execPath, [WRITER, m.path('origin'), String(size / 2 + i * region), String(region), 'random', String(1024 * 1024), '64', String(i + 1)]));
  // Everything the kernel lets through waits at the gate: 64 background requests of fio and the 16 writers.
  await until('the writes to be held by the freeze', async () => (await inFlight(m)) >= 64 + 16, 60_000);

  const mkdir = await timed(() => fsp.mkdir(m.path('snapshots', 'frozen')));
  t.true(mkdir < 3000, `mkdir took ${Math.round(mkdir)} ms`);
  const thaw = await timed(() => fsp.writeFile(m.path('control'), 'thaw\n'));
  t.true(thaw < 3000, `thaw took ${Math.round(thaw)} ms`);
  const exits = await Promise.all(writers.map((w) => new Promise<number | null>((resolve) => (w.exitCode !== null ? resolve(w.exitCode) : w.on('exit', resolve)))));
  t.deepEqual(exits, writers.map(() => 0), 'the held writers finished after the thaw');
  t.is((await m.info('frozen'))['state'], 'ok');
});

test('16 synchronous writers of /origin are in the daemon at once: the kernel does not serialize them', async (t) => {
  const m = await mountImage(t, { size: 64 * MiB, sparse: true, options: 'diff_size=64M' });
  // Held at the gate, each writer's one request stays in flight: 16 at once only if the
  // open carried FOPEN_PARALLEL_DIRECT_WRITES (else the inode lock lets one through).
  await fsp.writeFile(m.path('control'), 'freeze 60000\n');
  const region = 4 * MiB;
  const writers = Array.from({ length: 16 }, (_, i) =>
    background(t, process.execPath, [WRITER, m.path('origin'), String(i * region), String(region), 'random', '4096', '4', String(i + 1)]));
  await until('16 writes to be in the daemon at once', async () => (await inFlight(m)) >= 16, 60_000);
  await fsp.writeFile(m.path('control'), 'thaw\n');
  const exits = await Promise.all(writers.map((w) => new Promise<number | null>((resolve) => (w.exitCode !== null ? resolve(w.exitCode) : w.on('exit', resolve)))));
  t.deepEqual(exits, writers.map(() => 0));
});
