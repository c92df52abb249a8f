/**
 * Continuity of change tracking only with proof (issue 15, defects 6-8), on real image
 * files and loop devices:
 * - a write made outside the mount while it is mounted (another process writing the
 *   image file, a loop device attached to the image file, a write to the block device
 *   through its node) ends continuity: a cbt-reset during the mount and live snapshots
 *   corrupted, or a save that is not "clean"; never a resumed map that misses it;
 * - what cannot be read proves nothing: a loop device's deleted backing file, I/O
 *   statistics switched off;
 * - cbt_trust resumes only the same disk (its identity is kept in the state);
 * - this mount's own writes, many, small and unaligned, are never taken for outside ones.
 */
import test, { type ExecutionContext } from 'ava';
import { promises as fsp } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { KiB, MiB, makeImage, mountImage, must, scratchDir, writeRange, type Mounted } from './helpers/fixture.js';
import { EventTail } from './helpers/events.js';
import { assertReset, attach, stateHeader, tracking, unmount } from './helpers/cbt-tracking.js';

const BS = 64 * KiB;
const OPTIONS = 'diff_size=16M,block_size=64K';
/**
 * The rules that need a tally of our own writes (time stamps, counters, inotify) run
 * with the native fast path on, the default: its C writes are tallied with the
 * engine's, so they must never read as writes from outside.
 */
const TALLIED = OPTIONS;

/** Wait for the cbt-reset (reason origin-changed) a write from outside causes during the mount. */
async function outsideWriteSeen(tail: EventTail): Promise<Record<string, unknown>> {
  return tail.waitFor('cbt-reset origin-changed', (e) => e.type === 'cbt-reset' && e['reason'] === 'origin-changed', 15_000);
}

/** After a write from outside: this mount's generation, whichever look saw it, is not the old one. */
async function assertNotResumedFrom(t: ExecutionContext, m: Mounted, oldGeneration: string): Promise<void> {
  const tr = await tracking(m);
  t.not(tr.generation_id, oldGeneration, 'the generation that missed the write is not resumed');
  t.is(tr.generation_reason, 'origin-changed');
}

test('an ro mount whose image file another process writes does not save clean: the next mount does not resume (defect 6)', async (t) => {
  const m1 = await mountImage(t, { size: 8 * MiB, options: `${OPTIONS},ro` });
  const gen = (await tracking(m1)).generation_id;
  t.like((await tracking(m1)).outside_writes, { watched_by: ['fanotify', 'timestamps'], detections: 0 });
  await must('dd', ['if=/dev/urandom', `of=${m1.origin}`, 'bs=4k', 'count=1', `seek=${(5 * BS) / 4096}`, 'conv=notrunc', 'status=none']);
  await unmount(m1);
  const header = await stateHeader(`${m1.origin}.cbt`);
  // Seen at the last look (saved "unproven"), or by a look during the mount (a new generation saved).
  t.true(header['state'] === 'unproven' || header['generation_id'] !== gen, JSON.stringify(header));
  const m2 = await mountImage(t, { origin: m1.origin, options: OPTIONS });
  await assertNotResumedFrom(t, m2, gen);
});

test('a read-write image file written by another process while mounted: change tracking restarts, live snapshots are corrupted', async (t) => {
  const m = await mountImage(t, { size: 8 * MiB, options: OPTIONS });
  const tail = new EventTail(t, m.mnt);
  const gen = (await tracking(m)).generation_id;
  const watch = (await tracking(m)).outside_writes;
  t.deepEqual(watch?.watched_by, ['fanotify', 'timestamps'], 'the native fast path tallies its writes: the time stamps still prove');
  await writeRange(m.path('origin'), 0, randomBytes(3 * BS)); // the fast path's writes: ours too
  await fsp.mkdir(m.path('snapshots', 'before'));
  await writeRange(m.path('origin'), BS, randomBytes(BS));
  await must('dd', ['if=/dev/urandom', `of=${m.origin}`, 'bs=4k', 'count=2', 'seek=100', 'conv=notrunc', 'status=none']);
  const reset = await outsideWriteSeen(tail);
  t.not(reset['generation_id'], gen);
  const corrupted = await tail.waitType('corrupted', 'before');
  t.regex(String(corrupted['message']), /written outside the mount: process \d+/);
  t.is((await m.info('before'))['state'], 'corrupted');
  const tr = await tracking(m);
  t.like(tr, { generation_id: reset['generation_id'], generation_reason: 'origin-changed', changes_number: 0 });
  t.true((tr.outside_writes?.last_detected?.how ?? []).includes('fanotify'), JSON.stringify(tr.outside_writes));
  // Our own writes after that are ours: no second finding.
  await writeRange(m.path('origin'), 2 * BS, randomBytes(BS));
  await fsp.mkdir(m.path('snapshots', 'after'));
  t.is((await tracking(m)).outside_writes?.detections, 1);
  t.is((await m.info('after'))['state'], 'ok');
  tail.child.kill();
  await tail.exited;
  await unmount(m);
  t.like(await stateHeader(`${m.origin}.cbt`), { state: 'clean', generation_id: reset['generation_id'] });
});

test('a loop device attached to the image file writes it without fanotify: the time stamps tell across a quiet interval', async (t) => {
  const m = await mountImage(t, { size: 8 * MiB, options: TALLIED });
  const tail = new EventTail(t, m.mnt);
  const gen = (await tracking(m)).generation_id;
  await writeRange(m.path('origin'), 0, randomBytes(2 * BS));
  // A take looks for outside writes first: a quiet look (our writes returned) that sets the baseline.
  await fsp.mkdir(m.path('snapshots', 'quiet'));
  const loop = await attach(t, m.origin);
  await must('dd', ['if=/dev/urandom', `of=${loop}`, 'bs=4k', 'count=1', 'seek=40', 'oflag=direct', 'conv=notrunc', 'status=none']);
  await must('losetup', ['-d', loop]);
  await fsp.mkdir(m.path('snapshots', 'next')); // the next look
  const reset = await outsideWriteSeen(tail);
  t.not(reset['generation_id'], gen);
  const tr = await tracking(m);
  t.deepEqual(tr.outside_writes?.last_detected?.how, ['timestamps'], 'fanotify saw nothing: only the time stamps tell');
  t.is((await m.info('quiet'))['state'], 'corrupted');
});

test("a loop device origin whose backing file cannot be looked at proves nothing: no resume (defect 7)", async (t) => {
  const dir = await scratchDir(t);
  const backing = join(dir, 'backing.img');
  await makeImage(backing, 8 * MiB);
  const loop = await attach(t, backing);
  // Someone holds the backing file open, and it is deleted: the loop device still reads it.
  const held = await fsp.open(backing, 'r+');
  t.teardown(() => held.close());
  await fsp.unlink(backing);
  const options = `${OPTIONS},cbt_state=${join(dir, 'loop.cbt')}`;
  const m1 = await mountImage(t, { origin: loop, options });
  const gen = (await tracking(m1)).generation_id;
  t.true((await tracking(m1)).outside_writes?.cannot_see.some((s) => /backing file/.test(s)), 'says it cannot watch the backing file');
  await writeRange(m1.path('origin'), BS, randomBytes(100));
  await unmount(m1);
  // Written behind the loop device's back, through the descriptor that still reaches it.
  await held.write(Buffer.from('behind the loop device'), 0, 22, 6 * BS);
  await held.sync();
  const m2 = await mountImage(t, { origin: loop, options });
  await assertReset(t, m2, 'origin-changed', gen);
  t.regex(await fsp.readFile(m2.log, 'utf8'), /cannot be proven: .*backing file/);
});

test('I/O statistics switched off prove nothing: no resume (defect 8)', async (t) => {
  // A loop device over another mount's /origin: its backing file's times are the mount's
  // (they do not move when it is written), so with the device's statistics off nothing
  // but the counters could tell, and they stand still.
  const under = await mountImage(t, { size: 8 * MiB, options: 'diff_size=16M' });
  const loop = await attach(t, under.path('origin'));
  const iostats = `/sys/block/${loop.replace('/dev/', '')}/queue/iostats`;
  await fsp.writeFile(iostats, '0');
  t.teardown(() => fsp.writeFile(iostats, '1')); // runs before the detach: later teardowns first
  const options = `${OPTIONS},cbt_state=${join(under.dir, 'loop.cbt')}`;
  const m1 = await mountImage(t, { origin: loop, options });
  const gen = (await tracking(m1)).generation_id;
  t.true((await tracking(m1)).outside_writes?.cannot_see.some((s) => /statistics/.test(s)), 'says the counters prove nothing');
  await unmount(m1);
  const stat = `/sys/block/${loop.replace('/dev/', '')}/stat`;
  const before = await fsp.readFile(stat, 'utf8');
  await must('dd', ['if=/dev/urandom', `of=${loop}`, 'bs=4k', 'count=4', 'seek=10', 'oflag=direct', 'conv=notrunc', 'status=none']);
  t.is(await fsp.readFile(stat, 'utf8'), before, 'with iostats off the counters did not move');
  const m2 = await mountImage(t, { origin: loop, options });
  await assertReset(t, m2, 'origin-changed', gen);
  t.regex(await fsp.readFile(m2.log, 'utf8'), /I\/O statistics are off/);
});

test("cbt_trust resumes only the same disk: another disk of the same size under the state's path is refused (defect 8)", async (t) => {
  const dir = await scratchDir(t);
  const a = join(dir, 'a.img');
  const b = join(dir, 'b.img');
  await makeImage(a, 8 * MiB);
  await makeImage(b, 8 * MiB);
  const state = join(dir, 'disk.cbt');
  const options = `${OPTIONS},cbt_state=${state},cbt_trust`;
  const loopA = await attach(t, a);
  const m1 = await mountImage(t, { origin: loopA, options });
  let gen = (await tracking(m1)).generation_id;
  await writeRange(m1.path('origin'), BS, randomBytes(10));
  await unmount(m1);
  t.regex(JSON.stringify((await stateHeader(state))['origin']), /"identity":"loop:/, 'the disk is kept by identity');

  // After a "reboot" the names moved: the state's path now leads to disk b.
  const loopB = await attach(t, b);
  const m2 = await mountImage(t, { origin: loopB, options });
  gen = await assertReset(t, m2, 'origin-changed', gen);
  t.regex(await fsp.readFile(m2.log, 'utf8'), /another disk/);
  await unmount(m2);

  // The same disk b, attached again under another name, is still b: resumed.
  const loopB2 = await attach(t, b);
  await must('losetup', ['-d', loopB]);
  const m3 = await mountImage(t, { origin: loopB2, options });
  t.like(await tracking(m3), { resumed: true, generation_id: gen });
});

test('a loop device origin written through its node while mounted: seen by its counters, tracking restarts', async (t) => {
  const dir = await scratchDir(t);
  const backing = join(dir, 'backing.img');
  await makeImage(backing, 16 * MiB);
  const loop = await attach(t, backing);
  const m = await mountImage(t, { origin: loop, options: `${TALLIED},cbt_state=${join(dir, 'loop.cbt')}` });
  const tail = new EventTail(t, m.mnt);
  const gen = (await tracking(m)).generation_id;
  t.like((await tracking(m)).outside_writes, { watched_by: ['write-counters', 'inotify', 'fanotify'], detections: 0 });
  await writeRange(m.path('origin'), 0, randomBytes(4096));
  await fsp.mkdir(m.path('snapshots', 's'));
  // Not exclusive, so the kernel lets it through while we hold the device.
  await must('dd', ['if=/dev/urandom', `of=${loop}`, 'bs=1M', 'count=1', 'seek=8', 'oflag=direct', 'conv=notrunc', 'status=none']);
  await fsp.mkdir(m.path('snapshots', 'next')); // a look before the take
  const reset = await outsideWriteSeen(tail);
  t.not(reset['generation_id'], gen);
  t.is((await m.info('s'))['state'], 'corrupted');
  const how = (await tracking(m)).outside_writes?.last_detected?.how ?? [];
  t.true(how.includes('write-counters') || how.includes('inotify'), JSON.stringify(how));
});

test("a loop device origin whose backing file another process writes while mounted: fanotify on the backing file sees it", async (t) => {
  const dir = await scratchDir(t);
  const backing = join(dir, 'backing.img');
  await makeImage(backing, 16 * MiB);
  const loop = await attach(t, backing);
  const m = await mountImage(t, { origin: loop, options: `${OPTIONS},cbt_state=${join(dir, 'loop.cbt')}` });
  const tail = new EventTail(t, m.mnt);
  await writeRange(m.path('origin'), 0, randomBytes(3 * BS)); // ours, through the device: no finding
  await fsp.mkdir(m.path('snapshots', 's'));
  t.is((await tracking(m)).outside_writes?.detections, 0);
  await must('dd', ['if=/dev/urandom', `of=${backing}`, 'bs=4k', 'count=1', 'seek=300', 'conv=notrunc', 'status=none']);
  await outsideWriteSeen(tail);
  const last = (await tracking(m)).outside_writes?.last_detected;
  t.true(last?.how.includes('fanotify'), JSON.stringify(last));
  t.regex(last?.detail ?? '', /backing file/);
  t.is((await m.info('s'))['state'], 'corrupted');
});

test("this mount's own writes, many small unaligned ones from several writers, are never taken for outside ones", async (t) => {
  const dir = await scratchDir(t);
  const image = await mountImage(t, { size: 16 * MiB, options: TALLIED });
  const backing = join(dir, 'backing.img');
  await makeImage(backing, 16 * MiB);
  const loop = await attach(t, backing);
  const device = await mountImage(t, { origin: loop, options: `${TALLIED},cbt_state=${join(dir, 'loop.cbt')}` });
  for (const m of [image, device]) {
    const gen = (await tracking(m)).generation_id;
    const writers = Array.from({ length: 4 }, async (_, w) => {
      for (let i = 0; i < 150; i++) {
        const position = Math.floor(Math.random() * (16 * MiB - 10_000));
        await writeRange(m.path('origin'), position, randomBytes(1 + ((i * 977 + w * 31) % 9000)));
        if (i % 50 === 25) await fsp.mkdir(m.path('snapshots', `w${w}-${i}`));
      }
    });
    await Promise.all(writers);
    await must('sync', []);
    await fsp.mkdir(m.path('snapshots', 'last'));
    const tr = await tracking(m);
    t.is(tr.outside_writes?.detections, 0, `${m.origin}: ${JSON.stringify(tr.outside_writes)}`);
    t.is(tr.generation_id, gen);
    await unmount(m);
    const again = await mountImage(t, { origin: m.origin, options: m === image ? TALLIED : `${TALLIED},cbt_state=${join(dir, 'loop.cbt')}` });
    t.like(await tracking(again), { resumed: true, generation_id: gen });
  }
});
