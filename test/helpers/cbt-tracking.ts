/**
 * Change tracking across mounts, as the tests look at it: /status change_tracking, the
 * cbt-reset events a mount emitted, the state file's header, an unmount that waits for
 * the save, and loop devices detached at teardown only while still ours.
 */
import type { ExecutionContext } from 'ava';
import { promises as fsp } from 'node:fs';
import type { TrackingStatus } from '../../src/cli/cbt-commands.js';
import { CLI, daemonPids, must, run, type Mounted } from './fixture.js';

/** /status change_tracking, as `blksnapfs cbt info` reads it, plus how outside writes are watched. */
export type Tracking = TrackingStatus & {
  outside_writes: { watched_by: string[]; cannot_see: string[]; detections: number; last_detected: { how: string[]; detail: string } | null } | null;
};

export async function tracking(m: Mounted): Promise<Tracking> {
  return (await m.status())['change_tracking'] as Tracking;
}

/** The cbt-reset events this mount has emitted so far. */
export async function resets(m: Mounted): Promise<Array<Record<string, unknown>>> {
  const r = await run('timeout', ['1', 'cat', m.path('events')], { timeoutMs: 10_000 });
  return r.stdout.split('\n').filter((l) => l.length > 0).map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((e) => e['type'] === 'cbt-reset');
}

/** `blksnapfs umount` returns once the daemon has exited (so the state is saved). */
export async function unmount(m: Mounted): Promise<void> {
  await must(process.execPath, [CLI, 'umount', m.mnt]);
  const pids = await daemonPids(m.mnt);
  if (pids.length > 0) throw new Error(`daemon still running after blksnapfs umount: ${pids.join(' ')}`);
}

/**
 * Attach a loop device over `file`. The teardown detaches it only if it is still ours:
 * a test that detached it itself must not detach the device someone attached since.
 */
export async function attach(t: ExecutionContext, file: string): Promise<string> {
  const dev = (await must('losetup', ['-f', '--show', file])).trim();
  t.teardown(async () => {
    const backing = await fsp.readFile(`/sys/block/${dev.replace('/dev/', '')}/loop/backing_file`, 'utf8').catch(() => '');
    if (backing.trim() === file || backing.trim() === `${file} (deleted)`) await run('losetup', ['-d', dev]);
  });
  return dev;
}

/** A new generation must have started at this mount, for `reason`, announced once. */
export async function assertReset(t: ExecutionContext, m: Mounted, reason: string, oldGeneration: string): Promise<string> {
  const tr = await tracking(m);
  t.false(tr.resumed, `not resumed (${reason})`);
  t.is(tr.generation_reason, reason);
  t.not(tr.generation_id, oldGeneration, 'a new generation');
  t.is(tr.changes_number, 0);
  const ev = await resets(m);
  t.is(ev.length, 1, JSON.stringify(ev));
  t.like(ev[0], { generation_id: tr.generation_id, reason });
  return tr.generation_id;
}

export async function stateHeader(path: string): Promise<Record<string, unknown>> {
  const bytes = await fsp.readFile(path);
  const h = bytes.readUInt32LE(12);
  return JSON.parse(bytes.subarray(48, 48 + h).toString('utf8')) as Record<string, unknown>;
}
