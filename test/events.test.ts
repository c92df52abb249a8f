/**
 * /events as users follow it: real `cat` processes (and `timeout`, `kill -9`, the
 * blksnapfs CLI) on a real mount. Live delivery in seq order to several readers while
 * other processes use /origin and images, readers that stop or die, the backlog, and
 * a reader that falls behind the ring.
 */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { CLI, MiB, mountImage, run } from './helpers/fixture.js';
import { EventTail, seqs, sleep } from './helpers/events.js';

const OPTS = 'diff_size=64M,chunk_size=64K';

test('three cat readers see taken/destroyed live and in order while /origin and an image stay fast', async (t) => {
  const m = await mountImage(t, { size: 32 * MiB, options: OPTS });
  const before = join(m.dir, 'before.img');
  await fsp.copyFile(m.origin, before);
  const tails = [new EventTail(t, m.mnt), new EventTail(t, m.mnt), new EventTail(t, m.mnt)];
  await sleep(300); // all three are now waiting in a read

  const t0 = Date.now();
  await fsp.mkdir(m.path('snapshots', 's1'));
  await Promise.all(tails.map((tail) => tail.waitType('snapshot-taken', 's1', 1500)));
  const latency = Date.now() - t0;
  t.true(latency < 1000, `event delivered after ${latency} ms`);

  // Other processes write the origin and read the image while the readers wait.
  const started = Date.now();
  const [write, read] = await Promise.all([
    run('dd', ['if=/dev/urandom', `of=${m.path('origin')}`, 'bs=1M', 'count=16', 'seek=8', 'conv=notrunc,fsync', 'status=none'], { timeoutMs: 20_000 }),
    run('cmp', [m.path('snapshots', 's1', 'image'), before], { timeoutMs: 20_000 }),
  ]);
  const elapsed = Date.now() - started;
  t.is(write.code, 0, write.stderr);
  t.is(read.code, 0, `image differs from the origin before the snapshot: ${read.stdout}${read.stderr}`);
  t.true(elapsed < 10_000, `dd and cmp took ${elapsed} ms with three readers waiting`);

  await fsp.mkdir(m.path('snapshots', 's2'));
  await fsp.rmdir(m.path('snapshots', 's1'));
  await fsp.rmdir(m.path('snapshots', 's2'));
  await Promise.all(tails.map((tail) => tail.waitType('snapshot-destroyed', 's2')));

  // The mount's own first event: change tracking starts its first generation.
  const expected = [['cbt-reset', undefined], ['snapshot-taken', 's1'], ['snapshot-taken', 's2'], ['snapshot-destroyed', 's1'], ['snapshot-destroyed', 's2']];
  for (const tail of tails) {
    t.deepEqual(tail.lines.map((e) => [e.type, e['snapshot']]), expected);
    const s = seqs(tail.lines);
    t.deepEqual(s, [1, 2, 3, 4, 5], 'seq counts from 1 with no gap');
    for (const e of tail.lines) t.false(Number.isNaN(Date.parse(e.time)), `time ${e.time} is ISO 8601`);
  }
  t.deepEqual(tails[1]?.lines, tails[0]?.lines, 'every reader sees the same events');
  t.deepEqual(tails[2]?.lines, tails[0]?.lines, 'every reader sees the same events');
});

test('a reader killed with SIGKILL while waiting is gone within seconds, and the mount keeps working', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, options: 'diff_size=16M,chunk_size=64K' });
  const victim = new EventTail(t, m.mnt);
  const other = new EventTail(t, m.mnt);
  await sleep(500); // both are blocked in a read of /events
  const killedAt = Date.now();
  victim.child.kill('SIGKILL');
  const { signal } = await victim.exited;
  const gone = Date.now() - killedAt;
  t.is(signal, 'SIGKILL');
  t.true(gone < 3000, `killed reader took ${gone} ms to go`);

  // The mount answers everything as before; the surviving reader is unaffected.
  await fsp.mkdir(m.path('snapshots', 'after'));
  await other.waitType('snapshot-taken', 'after');
  const status = await m.status();
  t.deepEqual((status['snapshots'] as Array<{ name: string }>).map((s) => s.name), ['after']);
  const late = new EventTail(t, m.mnt);
  await late.waitType('snapshot-taken', 'after');
  t.deepEqual(victim.lines.map((e) => e.type), ['cbt-reset'], 'the victim saw only the backlog (the mount\'s cbt-reset)');
});

test('`timeout 2 cat events` prints the backlog, then exits 124 promptly', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, options: 'diff_size=16M,chunk_size=64K' });
  await fsp.mkdir(m.path('snapshots', 'early'));
  const t0 = Date.now();
  const r = await run('timeout', ['2', 'cat', m.path('events')], { timeoutMs: 10_000 });
  const elapsed = Date.now() - t0;
  t.is(r.code, 124, r.stderr);
  t.is(r.stderr, '');
  t.true(elapsed >= 1900 && elapsed < 4000, `cat ran for ${elapsed} ms`); // 2 s + at most one 1 s wait
  const lines = r.stdout.trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  t.like(lines[0], { seq: 1, type: 'cbt-reset', reason: 'first' });
  t.like(lines[1], { seq: 2, type: 'snapshot-taken', snapshot: 'early' });
  t.is(lines.length, 2);
});

test('blksnapfs events follows across idle seconds (EINTR is retried) and pretty-prints', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, options: 'diff_size=16M,chunk_size=64K' });
  const json = new EventTail(t, m.mnt, [process.execPath, CLI, 'events', '--json', m.mnt]);
  const pretty = new EventTail(t, m.mnt, ['bash', '-c', `${process.execPath} ${CLI} events ${m.mnt} | while IFS= read -r l; do printf '{"type":"raw","time":"","line":"%s"}\\n' "$l"; done`]);
  await sleep(2500); // several EINTR answers go by
  await fsp.mkdir(m.path('snapshots', 'idle'));
  await json.waitType('snapshot-taken', 'idle');
  const line = await pretty.waitFor('pretty line', (e) => typeof e['line'] === 'string' && String(e['line']).includes('snapshot-taken'));
  t.regex(String(line['line']), /#2 snapshot-taken snapshot=idle$/);
  t.is(json.child.exitCode, null, `the CLI stopped: ${json.stderr}`);
  t.is(json.stderr, '');
});

test('a reader that falls behind the ring gets one events-lost line with the right count, then seq order', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, options: 'diff_size=16M,chunk_size=64K,event_backlog=8' });
  const tail = new EventTail(t, m.mnt);
  await fsp.mkdir(m.path('snapshots', 'first'));
  await tail.waitType('snapshot-taken', 'first');

  // Stop the reader, then let 40 events go by: the ring keeps only the last 8.
  const pid = tail.child.pid ?? 0;
  process.kill(pid, 'SIGSTOP');
  await sleep(1500); // its pending read, if any, has been answered (EINTR) by now
  for (let i = 0; i < 20; i++) {
    await fsp.mkdir(m.path('snapshots', `n${i}`));
    await fsp.rmdir(m.path('snapshots', `n${i}`));
  }
  process.kill(pid, 'SIGCONT');
  await tail.waitType('snapshot-destroyed', 'n19');
  await fsp.mkdir(m.path('snapshots', 'last'));
  await tail.waitType('snapshot-taken', 'last');

  const lost = tail.of('events-lost');
  t.is(lost.length, 1, 'exactly one events-lost line');
  const i = tail.lines.findIndex((e) => e.type === 'events-lost');
  const lastBefore = tail.lines[i - 1]?.seq ?? 0;
  const firstAfter = tail.lines[i + 1]?.seq ?? 0;
  t.is(lastBefore, 2); // seq 1 is the mount's cbt-reset
  t.is(firstAfter, 43 - 8, 'resumes at the oldest event still in the ring');
  t.like(lost[0], { count: firstAfter - lastBefore - 1, from_seq: lastBefore + 1, to_seq: firstAfter - 1 });
  t.is(lost[0]?.['count'], 32);
  t.is(lost[0]?.seq, undefined, 'events-lost is not an event of the mount: no seq');
  const after = seqs(tail.lines.slice(i + 1));
  t.deepEqual(after, Array.from({ length: after.length }, (_, k) => firstAfter + k), 'then every seq in order');
  t.is(after[after.length - 1], 43);

  // A new reader gets the backlog the ring still holds (seq 36..43), and no events-lost line.
  const late = await run('timeout', ['1.5', 'cat', m.path('events')], { timeoutMs: 5000 });
  t.is(late.code, 124, late.stderr);
  const backlog = late.stdout.trimEnd().split('\n').map((l) => JSON.parse(l) as { seq?: number; type: string });
  t.deepEqual(backlog.map((e) => e.seq), [36, 37, 38, 39, 40, 41, 42, 43]);
});
