/**
 * The daemon, and the watchdog it leaves to clean up after a crash, act only on their
 * own mount (interface §1): never on a file system mounted at the same path later (the
 * kernel usually gives it the freed device number), nor on one stacked over ours.
 * SIGTERM ends the daemon's own session cleanly whatever is at the path by then. And
 * the watchdog starts whatever the size of mountinfo and the length of the path.
 *
 * Every wait is for a state (a process gone, a log line written), bounded only so that
 * a failure ends the test instead of hanging it.
 */
import test, { type ExecutionContext } from 'ava';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { loadCbtState } from '../src/storage/cbt-state-file.js';
import { escapeMountPath } from '../src/fuse/mountinfo.js';
import {
  MOUNT_HELPER, MiB, forceUnmount, isMounted, makeImage, mountImage, must, run, scratchDir, writeRange, type Mounted,
} from './helpers/fixture.js';

interface MountLine {
  id: string;
  parent: string;
  dev: string;
  fstype: string;
  source: string;
}

/** The top mount at `mnt` (the one no other mount at `mnt` sits on), or null. */
async function topMount(mnt: string): Promise<MountLine | null> {
  const escaped = escapeMountPath(mnt);
  const at: MountLine[] = [];
  for (const line of (await fsp.readFile('/proc/self/mountinfo', 'utf8')).split('\n')) {
    const f = line.split(' ');
    const dash = f.indexOf('-');
    if (dash < 0 || f[4] !== escaped) continue;
    at.push({ id: f[0] ?? '', parent: f[1] ?? '', dev: f[2] ?? '', fstype: f[dash + 1] ?? '', source: f[dash + 2] ?? '' });
  }
  return at.find((m) => !at.some((o) => o.parent === m.id)) ?? null;
}

/** Has `pid` exited (gone, or a zombie nobody reaped yet)? */
async function exited(pid: number): Promise<boolean> {
  const stat = await fsp.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => null);
  return stat === null || stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
}

/** Wait until `pid` has exited; false if it has not after a generous bound. */
async function waitExit(pid: number): Promise<boolean> {
  for (let i = 0; i < 600; i++) {
    if (await exited(pid)) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
}

/** The daemon's watchdog: its child process named blksnapfs-watchdog. */
async function watchdogOf(daemon: number): Promise<number> {
  for (const task of await fsp.readdir(`/proc/${daemon}/task`)) {
    const children = await fsp.readFile(`/proc/${daemon}/task/${task}/children`, 'utf8').catch(() => '');
    for (const pid of children.split(' ').filter((s) => s.length > 0).map(Number)) {
      const cmdline = await fsp.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
      if (cmdline.startsWith('blksnapfs-watchdog')) return pid;
    }
  }
  throw new Error(`daemon ${daemon} has no watchdog`);
}

/** The daemon's pid and its mount's device number, while the mount is live. */
async function ours(m: Mounted): Promise<{ pid: number; dev: string }> {
  const pid = (await m.status())['pid'] as number;
  const top = await topMount(m.mnt);
  if (top === null || top.fstype !== 'fuse.blksnapfs') throw new Error(`no blksnapfs mount at ${m.mnt}`);
  return { pid, dev: top.dev };
}

/**
 * Mount a small tmpfs at `mnt` (over whatever is there) holding a marker file; it is
 * unmounted at teardown while it is still the top mount there. With `dev`, try a few
 * times to get that device number (the kernel hands out the lowest free one, and a
 * test running alongside may hold it for a moment).
 */
async function tmpfsAt(t: ExecutionContext, mnt: string, dev?: string): Promise<{ source: string; marker: string; dev: string }> {
  const source = `blksnapfs-test-${randomBytes(4).toString('hex')}`;
  const marker = randomBytes(16).toString('hex');
  t.teardown(async () => {
    for (let i = 0; i < 3 && (await topMount(mnt))?.source === source; i++) await run('umount', [mnt]);
  });
  let got = '';
  for (let attempt = 0; attempt < 20; attempt++) {
    await must('mount', ['-t', 'tmpfs', '-o', 'size=1M', source, mnt]);
    got = (await topMount(mnt))?.dev ?? '';
    if (dev === undefined || got === dev) break;
    await must('umount', [mnt]);
  }
  if ((await topMount(mnt))?.source !== source) await must('mount', ['-t', 'tmpfs', '-o', 'size=1M', source, mnt]);
  await fsp.writeFile(join(mnt, 'marker'), marker);
  return { source, marker, dev: got };
}

/** The tmpfs is still the top mount at `mnt`, with its marker. */
async function assertTmpfsIntact(t: ExecutionContext, mnt: string, tmp: { source: string; marker: string }): Promise<void> {
  const top = await topMount(mnt);
  t.is(top?.source, tmp.source, `the later tmpfs is still the top mount at ${mnt}`);
  t.is(await fsp.readFile(join(mnt, 'marker'), 'utf8').catch(() => null), tmp.marker, 'and its file is intact');
}

async function stateOf(m: Mounted): Promise<string> {
  const loaded = await loadCbtState(`${m.origin}.cbt`);
  return loaded.kind === 'ok' ? loaded.state.header.state : loaded.kind;
}

// Serial (AVA runs it before the others of this file): no mount of ours may take the
// device number it frees while it looks for the kernel's reuse of it.
test.serial('kill -9 of a stopped daemon whose mount was replaced: the new mount at the same path (same device number) stays', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, sparse: true, options: 'diff_size=8M' });
  const { pid, dev } = await ours(m);
  const watchdog = await watchdogOf(pid);
  t.teardown(() => {
    try {
      process.kill(pid, 'SIGCONT');
    } catch { /* gone */ }
  });
  process.kill(pid, 'SIGSTOP');
  // Unmount behind the stopped daemon's back (-c -i: nothing that would ask the daemon).
  await must('umount', ['-c', '-i', m.mnt]);
  const tmp = await tmpfsAt(t, m.mnt, dev);
  if (tmp.dev !== dev) t.log(`the kernel gave the tmpfs ${tmp.dev}, not ${dev}: the reuse case was not hit this time`);
  process.kill(pid, 'SIGKILL'); // delivered to a stopped process too
  t.true(await waitExit(pid), 'the daemon is gone');
  t.true(await waitExit(watchdog), 'its watchdog has done whatever it does');
  await assertTmpfsIntact(t, m.mnt, tmp);
});

test('kill -9 of a daemon whose mount has another mounted over it: that mount stays, ours is aborted underneath', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, sparse: true, options: 'diff_size=8M' });
  const { pid } = await ours(m);
  const watchdog = await watchdogOf(pid);
  const tmp = await tmpfsAt(t, m.mnt);
  process.kill(pid, 'SIGKILL');
  t.true(await waitExit(pid));
  t.true(await waitExit(watchdog));
  await assertTmpfsIntact(t, m.mnt, tmp);
  // Under the tmpfs: our own mount, its connection dead (not served by anybody).
  await must('umount', [m.mnt]);
  t.is((await topMount(m.mnt))?.fstype, 'fuse.blksnapfs', 'our mount was under the tmpfs and stayed there');
  // opendir always asks the file system's daemon (a stat may be answered from cache).
  const err = await fsp.readdir(m.mnt).then(() => null, (e: NodeJS.ErrnoException) => e.code);
  t.is(err, 'ENOTCONN', 'our connection is aborted');
  await must('umount', [m.mnt]);
});

test('kill -9 of a live daemon: the watchdog leaves no dead mount behind', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, sparse: true, options: 'diff_size=8M' });
  const { pid } = await ours(m);
  const watchdog = await watchdogOf(pid);
  process.kill(pid, 'SIGKILL');
  t.true(await waitExit(pid));
  t.true(await waitExit(watchdog));
  t.false(await isMounted(m.mnt));
});

test('SIGTERM after umount -l and a new mount at the path: the new mount stays; the daemon ends its own session, saves change tracking and exits', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, sparse: true, options: 'diff_size=8M' });
  const { pid } = await ours(m);
  await writeRange(m.path('origin'), 3 * MiB, randomBytes(64 * 1024));
  t.is(await stateOf(m), 'in-use');
  const held = await fsp.open(m.path('status'), 'r');
  t.teardown(() => held.close().catch(() => undefined));
  await must('umount', ['-l', m.mnt]);
  t.true((await held.read(Buffer.alloc(16), 0, 16, 0)).bytesRead > 0, 'the detached mount still serves its open file');
  const tmp = await tmpfsAt(t, m.mnt);
  process.kill(pid, 'SIGTERM');
  t.true(await waitExit(pid), 'the daemon exits');
  await assertTmpfsIntact(t, m.mnt, tmp);
  t.is(await stateOf(m), 'clean', 'change tracking was saved by a clean shutdown');
  const err = await held.read(Buffer.alloc(16), 0, 16, 0).then(() => null, (e: NodeJS.ErrnoException) => e.code);
  t.is(err, 'ENOTCONN', 'our own session was ended');
});

test('SIGTERM of a live idle mount unmounts it, saves change tracking and exits', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, sparse: true, options: 'diff_size=8M' });
  const { pid } = await ours(m);
  process.kill(pid, 'SIGTERM');
  t.true(await waitExit(pid));
  t.false(await isMounted(m.mnt));
  t.is(await stateOf(m), 'clean');
});

test('SIGTERM of a mount in use is EBUSY and changes nothing; once it is free, SIGTERM unmounts', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, sparse: true, options: 'diff_size=8M' });
  const { pid } = await ours(m);
  const held = await fsp.open(m.path('status'), 'r');
  t.teardown(() => held.close().catch(() => undefined));
  process.kill(pid, 'SIGTERM');
  let refused = false;
  for (let i = 0; i < 600 && !refused; i++) {
    refused = (await fsp.readFile(m.log, 'utf8')).includes('cannot unmount yet');
    if (!refused) await new Promise((r) => setTimeout(r, 50));
  }
  t.true(refused, 'the daemon logged EBUSY');
  t.is((await topMount(m.mnt))?.fstype, 'fuse.blksnapfs');
  t.false(await exited(pid));
  t.is((await m.status())['pid'], pid, 'and still serves');
  await held.close();
  process.kill(pid, 'SIGTERM');
  t.true(await waitExit(pid));
  t.false(await isMounted(m.mnt));
});

test('the watchdog works for a mount point whose mountinfo form is over 8 KiB', async (t) => {
  const dir = await scratchDir(t);
  const origin = join(dir, 'disk.img');
  await makeImage(origin, 16 * MiB, { sparse: true });
  // Spaces are written \040 in mountinfo: 9 × 250 of them make 9000 bytes there.
  let mnt = dir;
  for (let i = 0; i < 9; i++) mnt = join(mnt, ' '.repeat(250));
  await fsp.mkdir(mnt, { recursive: true });
  t.true(escapeMountPath(mnt).length > 8192);
  t.teardown(async () => {
    if ((await topMount(mnt))?.fstype === 'fuse.blksnapfs') await run('umount', ['-l', mnt]);
    await forceUnmount(mnt);
  });
  const r = await run(process.execPath, [MOUNT_HELPER, origin, mnt, '-o', `diff_storage=${join(dir, 'disk.diff')},diff_size=8M`]);
  t.is(r.code, 0, r.stderr);
  const top = await topMount(mnt);
  t.is(top?.fstype, 'fuse.blksnapfs');
  const pid = JSON.parse(await fsp.readFile(join(mnt, 'status'), 'utf8'))['pid'] as number;
  const watchdog = await watchdogOf(pid);
  process.kill(pid, 'SIGKILL');
  t.true(await waitExit(pid));
  t.true(await waitExit(watchdog));
  t.false(await isMounted(escapeMountPath(mnt)), 'no dead mount left');
});

test('the watchdog works when mountinfo is over 1 MiB (16k mounts in a private mount namespace)', async (t) => {
  const dir = await scratchDir(t);
  const origin = join(dir, 'disk.img');
  await makeImage(origin, 16 * MiB, { sparse: true });
  const mnt = join(dir, 'mnt');
  await fsp.mkdir(mnt);
  await fsp.mkdir(join(dir, 'fill'));
  // Everything happens inside new mount and pid namespaces: whatever becomes of the
  // script (a timeout kills unshare, which kills it), every process in them dies with
  // it, and the mounts go with the namespace.
  const script = `
    fill=${dir}/fill; mnt=${mnt}
    mount -t tmpfs -o size=1M blksnapfs-test-fill "$fill"; mkdir "$fill/a"
    for i in $(seq 1 14); do mount --rbind "$fill" "$fill/a"; done
    echo "mountinfo $(wc -c < /proc/self/mountinfo)"
    "${process.execPath}" "${MOUNT_HELPER}" "${origin}" "$mnt" -o diff_storage=${dir}/disk.diff,diff_size=8M
    grep -q " $mnt " /proc/self/mountinfo
    pid=$(pgrep -f "daemon/entry.js .* $mnt ")
    watchdog=$(pgrep -P "$pid" -f blksnapfs-watchdog) || { echo "no watchdog"; exit 3; }
    kill -KILL "$pid"
    for i in $(seq 1 600); do [ -e /proc/$watchdog ] && ! grep -q '^[0-9]* ([^)]*) Z' /proc/$watchdog/stat || break; sleep 0.05; done
    if grep -q " $mnt " /proc/self/mountinfo; then echo "dead mount left"; exit 4; fi
    echo clean`;
  const r = await run('unshare', ['--mount', '--propagation', 'private', '--pid', '--fork', '--kill-child', '--mount-proc', 'bash', '-euo', 'pipefail', '-c', script]);
  const size = Number(/mountinfo (\d+)/.exec(r.stdout)?.[1] ?? 0);
  t.true(size > 1024 * 1024, `mountinfo was ${size} bytes`);
  t.is(r.code, 0, `${r.stdout}\n${r.stderr}`);
  t.true(r.stdout.includes('clean'));
});
