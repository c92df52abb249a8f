/**
 * /control `freeze MS` and `thaw`, and `blksnapfs snapshot take MOUNT [MOUNT...] NAME
 * [--fsfreeze DIR]`: origin writes are held while frozen and resume at thaw or at the
 * deadline (also when the freezing caller is killed); mkdir works while frozen; a set
 * of snapshots of two origins is one cut; a file system frozen for a take is always
 * thawed and its image is a clean ext4.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import {
  CLI, MiB, ROOT, loopDevice, makeImage, mountDevice, mountImage, must, readRange, run, scratchDir, sh, type Mounted, type RunResult,
} from './helpers/fixture.js';
import { EventTail, control, sleep, spawnGroup } from './helpers/events.js';
import { recordNumber } from './helpers/pair-writer.js';
import { RECORD } from './helpers/seq-writer.js';

const PAIR_WRITER = join(ROOT, 'dist', 'test', 'helpers', 'pair-writer.js');

function cli(...args: string[]): Promise<RunResult> {
  return run(process.execPath, [CLI, ...args]);
}

/** A process killed (and waited for) at teardown, so nothing it holds outlives the test. */
function owned(t: ExecutionContext, cmd: string, args: string[]): { child: ChildProcess; exit: Promise<number | null> } {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
      await exit;
    }
  });
  return { child, exit };
}

/** Write one block of 0x5a at block `block` of the origin in a dd process; `finished` tells whether it returned. */
function blockWrite(t: ExecutionContext, m: Mounted, block: number): { exit: Promise<number | null>; finished: () => boolean } {
  const w = owned(t, 'bash', ['-c', `head -c ${RECORD} /dev/zero | tr '\\0' Z | dd of=${m.path('origin')} bs=${RECORD} seek=${block} count=1 conv=notrunc status=none`]);
  let done = false;
  void w.exit.then(() => (done = true));
  return { exit: w.exit, finished: () => done };
}

function lineOf(stdout: NodeJS.ReadableStream, text: string): Promise<void> {
  return new Promise((resolve) => {
    let seen = '';
    stdout.on('data', (d: Buffer) => {
      seen += d.toString('utf8');
      if (seen.includes(text)) resolve();
    });
  });
}

test('freeze holds origin writes until thaw; mkdir works while frozen; bad and repeated commands', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, options: 'diff_size=16M' });
  const tail = new EventTail(t, m.mnt);
  const before = await readRange(m.path('origin'), 0, RECORD);

  t.is(await control(m.mnt, 'freeze 30000'), null);
  t.truthy((await m.status())['frozen_until'], '/status says until when');
  const w = blockWrite(t, m, 0);
  await sleep(700);
  t.false(w.finished(), 'an origin write waits while frozen');

  await fsp.mkdir(m.path('snapshots', 'during'));
  t.truthy((await m.status())['frozen_until'], 'mkdir returned while still frozen: it did not wait for the thaw');
  t.false(w.finished(), 'the take did not let the held write through');
  t.is(await control(m.mnt, 'freeze 1000'), 'EBUSY', 'a second freeze while frozen is EBUSY');

  t.is(await control(m.mnt, 'thaw'), null);
  t.is(await w.exit, 0, 'the held write completes at thaw');
  t.is((await tail.waitType('thawed'))['reason'], 'thaw');
  t.is((await m.status())['frozen_until'], null);
  t.true((await readRange(m.path('origin'), 0, RECORD)).equals(Buffer.alloc(RECORD, 'Z')), 'the write reached the origin');
  t.true((await readRange(m.path('snapshots', 'during', 'image'), 0, RECORD)).equals(before), 'a write held at the take is not in the snapshot');
  // cbt-reset (reason first) opens every fresh mount's stream; this test is about the rest.
  t.deepEqual(tail.lines.filter((e) => e.type !== 'cbt-reset').map((e) => e.type), ['frozen', 'snapshot-taken', 'thawed']);

  t.is(await control(m.mnt, 'thaw'), 'EINVAL', 'thaw without a freeze');
  t.is(await control(m.mnt, 'thaw now'), 'ESTALE', 'a thaw naming a freeze that is not there');
  const longToken = 'x'.repeat(65);
  for (const bad of ['freeze 0', 'freeze 60001', 'freeze', 'freeze 1s', 'freeze 10 20 30', 'freeze 10 a/b', `freeze 10 ${longToken}`, 'thaw a b', 'thaw a/b']) {
    t.is(await control(m.mnt, bad), 'EINVAL', bad);
  }
  t.is((await m.status())['frozen_until'], null, 'bad commands freeze nothing');
});

test('the deadline thaws by itself, with a thawed event of reason deadline', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, options: 'diff_size=16M' });
  const tail = new EventTail(t, m.mnt);
  t.is(await control(m.mnt, 'freeze 1500'), null);
  const frozenAt = Date.now();
  const w = blockWrite(t, m, 3);
  t.is(await w.exit, 0);
  const waited = Date.now() - frozenAt;
  t.true(waited >= 1200, `the write waited for the deadline (${waited} ms)`);
  t.true(waited < 15_000, `and not for ever (${waited} ms)`);
  const thawed = await tail.waitType('thawed');
  t.is(thawed['reason'], 'deadline');
  t.is((await m.status())['frozen_until'], null);
  t.is(await control(m.mnt, 'thaw'), 'EINVAL', 'nothing left to thaw');
});

test('a freezing caller killed while it holds the freeze: writers resume by the deadline', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, options: 'diff_size=16M' });
  const tail = new EventTail(t, m.mnt);
  // The caller keeps /control open and dies without a thaw.
  const caller = spawnGroup(t, 'bash', ['-c', `exec 3>${m.path('control')}; echo "freeze 2000" >&3; echo frozen; exec sleep 600`]);
  await lineOf(caller.stdout ?? process.stdin, 'frozen');
  const frozenAt = Date.now();
  process.kill(-(caller.pid ?? 0), 'SIGKILL');
  const w = blockWrite(t, m, 5);
  await sleep(300);
  t.false(w.finished(), 'still frozen after the caller died');
  t.is(await w.exit, 0, 'the writer resumed');
  const waited = Date.now() - frozenAt;
  t.true(waited < 15_000, `by the deadline, not for ever (${waited} ms after the freeze)`);
  await tail.waitType('thawed');
  t.deepEqual(tail.lines.filter((e) => e.type !== 'cbt-reset').map((e) => [e.type, e['reason']]), [['frozen', undefined], ['thawed', 'deadline']]);
});

test("a thaw ends only its own freeze: A's ran out, B froze, A's late thaw is ESTALE and B stays frozen", async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, options: 'diff_size=16M' });
  const tail = new EventTail(t, m.mnt);
  t.is(await control(m.mnt, 'freeze 300 caller-A'), null);
  await tail.waitFor('thawed by the deadline', (e) => e.type === 'thawed' && e['reason'] === 'deadline');
  t.is(await control(m.mnt, 'freeze 30000 caller-B'), null);
  t.is(await control(m.mnt, 'thaw caller-A'), 'ESTALE', "A learns that its cut was not held");
  t.truthy((await m.status())['frozen_until'], "B's freeze still holds");
  t.is(await control(m.mnt, 'thaw'), 'ESTALE', 'nor does a plain thaw end a freeze made with a token');
  t.truthy((await m.status())['frozen_until']);
  const w = blockWrite(t, m, 2);
  t.is(await control(m.mnt, 'thaw caller-B'), null);
  t.is(await w.exit, 0, 'the held write completes once B thaws');
  await tail.waitFor('thawed by B', (e) => e.type === 'thawed' && e['reason'] === 'thaw');
  t.deepEqual(tail.lines.filter((e) => e.type !== 'cbt-reset').map((e) => [e.type, e['reason']]),
    [['frozen', undefined], ['thawed', 'deadline'], ['frozen', undefined], ['thawed', 'thaw']]);
  t.is(await control(m.mnt, 'thaw caller-B'), 'ESTALE', 'B thawed already');
});

test('a coherent take whose freeze of one mount ran out fails and leaves nothing, even when someone froze that mount since', async (t) => {
  const a = await mountImage(t, { size: 16 * MiB, sparse: true, options: 'diff_size=16M' });
  const b = await mountImage(t, { size: 16 * MiB, sparse: true, options: 'diff_size=16M' });
  // The file system for --fsfreeze lives on a third mount, c: freezing c stalls `fsfreeze -f`
  // (it must write through c's origin), which holds the CLI before it freezes a or b.
  const origin = join((await scratchDir(t)), 'fs.img');
  await makeImage(origin, 64 * MiB, { sparse: true });
  await must('mkfs.ext4', ['-q', '-F', origin]);
  const c = await mountImage(t, { origin, options: 'diff_size=64M' });
  const fsDir = join(c.dir, 'live');
  await mountDevice(t, await loopDevice(t, c.path('origin')), fsDir);
  t.teardown(async () => {
    await run('fsfreeze', ['-u', fsDir]);
  });
  const tailA = new EventTail(t, a.mnt);
  const daemonB = Number((await b.status())['pid']);
  t.teardown(() => {
    try {
      process.kill(daemonB, 'SIGCONT');
    } catch {
      // gone
    }
  });

  t.is(await control(c.mnt, 'freeze 60000 test-c'), null);
  const take = owned(t, process.execPath, [CLI, 'snapshot', 'take', a.mnt, b.mnt, 'cut', '--fsfreeze', fsDir, '--freeze-timeout', '3000']);
  let stderr = '';
  take.child.stderr?.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
  for (let i = 0; i < 200 && (await run('pgrep', ['-f', `fsfreeze -f ${fsDir}`])).code !== 0; i++) await sleep(50);
  // b's daemon stops: the CLI's freeze of b waits in the kernel and starts only when b resumes.
  process.kill(daemonB, 'SIGSTOP');
  t.is(await control(c.mnt, 'thaw test-c'), null);
  await tailA.waitType('frozen', undefined, 30_000);
  await tailA.waitFor("the CLI's freeze of a ran out", (e) => e.type === 'thawed' && e['reason'] === 'deadline', 30_000);
  // Someone else freezes a now: a plain thaw by the CLI would end this freeze and succeed.
  t.is(await control(a.mnt, 'freeze 60000 someone-else'), null);
  process.kill(daemonB, 'SIGCONT');

  t.not(await take.exit, 0, 'the take fails');
  t.regex(stderr, /freeze of .* ran out/);
  t.is(stderr.trim().split('\n').length, 1, stderr);
  t.false(existsSync(a.path('snapshots', 'cut')), 'the set is destroyed on a');
  t.false(existsSync(b.path('snapshots', 'cut')), 'and on b');
  t.truthy((await a.status())['frozen_until'], "the other caller's freeze of a still holds");
  t.is(await control(a.mnt, 'thaw someone-else'), null, 'and is ended by its own thaw');
  t.is((await b.status())['frozen_until'], null, 'b was thawed');
  t.is(await run('fsfreeze', ['-u', fsDir]).then((r) => r.code), 1, 'the file system was thawed');
});

test('coherent takes of two origins with the CLI: each pair of images has seqB <= seqA <= seqB + 1', async (t) => {
  const a = await mountImage(t, { size: 16 * MiB, sparse: true, options: 'diff_size=32M' });
  const b = await mountImage(t, { size: 16 * MiB, sparse: true, options: 'diff_size=32M' });
  const tailA = new EventTail(t, a.mnt);
  const writer = owned(t, process.execPath, [PAIR_WRITER, a.path('origin'), b.path('origin')]);
  await lineOf(writer.child.stdout ?? process.stdin, 'started');

  const seen: Array<[number, number]> = [];
  for (let i = 0; i < 20; i++) {
    const name = `cut${i}`;
    const r = await cli('snapshot', 'take', a.mnt, b.mnt, name, '--json');
    t.is(r.code, 0, r.stderr);
    const set = JSON.parse(r.stdout) as Array<{ name: string; mount: string; state: string }>;
    t.deepEqual(set.map((s) => [s.mount, s.name, s.state]), [[a.mnt, name, 'ok'], [b.mnt, name, 'ok']]);
    const seqA = recordNumber(await readRange(a.path('snapshots', name, 'image'), 0, RECORD));
    const seqB = recordNumber(await readRange(b.path('snapshots', name, 'image'), 0, RECORD));
    t.true(seqA >= 1 && seqB >= 1, `take ${i}: whole records (A ${seqA}, B ${seqB})`);
    t.true(seqB <= seqA && seqA <= seqB + 1, `take ${i}: seqA ${seqA}, seqB ${seqB}`);
    seen.push([seqA, seqB]);
    await fsp.rmdir(a.path('snapshots', name));
    await fsp.rmdir(b.path('snapshots', name));
  }
  t.is(writer.child.exitCode, null, 'the writer ran throughout');
  const first = seen[0]?.[0] ?? 0;
  const last = seen[seen.length - 1]?.[0] ?? 0;
  t.true(last > first + 20, `the writer kept writing between the takes (${first} -> ${last})`);
  t.is(tailA.of('frozen').length, 20);
  t.deepEqual(tailA.of('thawed').map((e) => e['reason']), new Array<string>(20).fill('thaw'));
});

test('--fsfreeze: the image is a clean ext4; the file system is thawed after a failed or interrupted take', async (t) => {
  const dir = await scratchDir(t);
  const origin = join(dir, 'fs.img');
  await makeImage(origin, 128 * MiB, { sparse: true });
  await must('mkfs.ext4', ['-q', '-F', origin]);
  const a = await mountImage(t, { origin, options: 'diff_size=128M,chunk_size=64K' });
  const b = await mountImage(t, { size: 16 * MiB, sparse: true, options: 'diff_size=16M' });
  const live = await loopDevice(t, a.path('origin'));
  const fsDir = join(a.dir, 'live');
  await mountDevice(t, live, fsDir);
  // Registered last, so it runs first: never leave the file system frozen.
  t.teardown(async () => {
    await run('fsfreeze', ['-u', fsDir]);
  });
  const isFrozen = async (): Promise<boolean> => {
    // fsfreeze -u fails with EINVAL on a file system that is not frozen; thaw it if it was.
    return (await run('fsfreeze', ['-u', fsDir])).code === 0;
  };

  // Dirty data only the freeze flushes, and a writer that keeps the file system busy.
  await sh(`for i in $(seq 1 16); do head -c 1M /dev/urandom > ${fsDir}/f$i; done; cd ${fsDir} && sha256sum f* > ${dir}/files.sha`);
  const busy = owned(t, 'bash', ['-c', `mkdir -p ${fsDir}/busy; i=0; while true; do head -c 256K /dev/urandom > ${fsDir}/busy/$((i % 64)); i=$((i+1)); done`]);

  const notMountPoint = await cli('snapshot', 'take', a.mnt, b.mnt, 'clean', '--fsfreeze', a.dir);
  t.not(notMountPoint.code, 0);
  t.regex(notMountPoint.stderr, /not a mount point/, 'fsfreeze of a plain directory would freeze whatever holds it');
  t.not((await cli('snapshot', 'take', a.mnt)).code, 0, 'a mount and no name');

  const r = await cli('snapshot', 'take', a.mnt, b.mnt, 'clean', '--fsfreeze', fsDir);
  t.is(r.code, 0, r.stderr);
  t.false(await isFrozen(), 'thawed after the take');
  const img = await loopDevice(t, a.path('snapshots', 'clean', 'image'), true);
  const fsck = await run('e2fsck', ['-fn', img]);
  t.is(fsck.code, 0, `e2fsck -fn of the image: ${fsck.stdout}${fsck.stderr}`);
  const snapDir = join(dir, 'snap');
  await mountDevice(t, img, snapDir, ['-o', 'ro,noload']);
  await sh(`cd ${snapDir} && sha256sum -c --quiet ${dir}/files.sha`);
  t.pass('the files written before the take are in the image');

  // A take that fails on the second mount: the first mount's snapshot goes, everything thaws.
  await fsp.mkdir(b.path('snapshots', 'taken'));
  const failed = await cli('snapshot', 'take', a.mnt, b.mnt, 'taken', '--fsfreeze', fsDir);
  t.not(failed.code, 0);
  t.is(failed.stderr.trim().split('\n').length, 1, failed.stderr);
  t.regex(failed.stderr, /exists/);
  t.false(existsSync(a.path('snapshots', 'taken')), "the first mount's snapshot of the failed set is destroyed");
  t.false(await isFrozen(), 'thawed after the failed take');
  t.is((await a.status())['frozen_until'], null);
  t.is((await b.status())['frozen_until'], null);

  // SIGTERM while the take waits in fsfreeze -f: we hold A frozen, so flushing the
  // file system's dirty data stalls until our freeze's deadline.
  if (busy.child.pid !== undefined) process.kill(-busy.child.pid, 'SIGKILL');
  await busy.exit;
  await sh(`sync -f ${fsDir}; head -c 4M /dev/urandom > ${fsDir}/dirty`);
  t.is(await control(a.mnt, 'freeze 5000'), null);
  const take = owned(t, process.execPath, [CLI, 'snapshot', 'take', a.mnt, b.mnt, 'interrupted', '--fsfreeze', fsDir]);
  let stderr = '';
  take.child.stderr?.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
  for (let i = 0; i < 100 && (await run('pgrep', ['-f', `fsfreeze -f ${fsDir}`])).code !== 0; i++) await sleep(50);
  take.child.kill('SIGTERM');
  t.not(await take.exit, 0);
  t.regex(stderr, /interrupted by SIGTERM/);
  t.is(stderr.trim().split('\n').length, 1, stderr);
  t.false(await isFrozen(), 'thawed after the interrupted take');
  t.false(existsSync(a.path('snapshots', 'interrupted')));
  t.false(existsSync(b.path('snapshots', 'interrupted')));
  await sh(`timeout 20 sh -c 'echo after > ${fsDir}/after && sync -f ${fsDir}'`);
});
