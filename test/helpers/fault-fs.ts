/**
 * A fault-injection file system for the tests (this kernel has no device-mapper, so no
 * dm-flakey or dm-error): a FUSE passthrough to a directory on ext4, run as its own
 * process (test/helpers/fault-fs-process.ts), whose files can be told to fail.
 *
 * What it can inject, per file (a path inside the fault file system):
 * - reads, writes or fallocate calls failing with EIO or ENOSPC (`errno`), and/or
 *   answered only after `delayMs` (to hold a request in flight while the test acts),
 * - only in a byte range [from, to) (requests that overlap it fail whole),
 * - and/or only after `afterBytes` more bytes of such requests went through
 *   (then every later matching request fails too, like a full disk).
 * A failed request writes nothing. `heal()` removes the rules; `fired()` says how many
 * requests were failed or delayed so far (a test checks its fault really fired).
 *
 * How to drive it:
 *   const ffs = await startFaultFs(t);                 // mounted; torn down with the test
 *   await fsp.copyFile(src, ffs.backingPath('disk.img')); // set files up on ext4 directly
 *   mount blksnapfs with origin ffs.path('disk.img'), diff_storage=ffs.path('disk.diff')
 *   await ffs.fail({ file: 'disk.img', op: 'read', errno: 'EIO', from: 0, to: 65536 });
 *   ... the daemon's reads of that range now fail ...
 *   await ffs.heal();
 *   compare ffs.backingPath('disk.img') with what the test wrote (the truth on disk).
 *
 * Files are passed through to the backing directory, so what a test reads at
 * `backingPath` is exactly what reached "the disk". The mount uses direct_io (every
 * request reaches the process; O_DIRECT opens work), implements fallocate (through a
 * patched build of fuse-native, see fault-fuse-native.ts) and leaves flock to the kernel.
 *
 * Teardown, registered before the mount exists: heal, SIGTERM (the process unmounts),
 * SIGKILL after 3 s, then `fusermount -u` or a lazy `umount -l` if anything is still
 * mounted. Register it before the blksnapfs mount that uses it: ava runs teardowns in
 * reverse order, so blksnapfs is unmounted first.
 */
import type { ExecutionContext } from 'ava';
import { fork, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMounted, run, scratchDir } from './fixture.js';
import { buildFaultFuse } from './fault-fuse-native.js';
import type { FaultReply, FaultRequest } from './fault-fs-process.js';
import type { FaultRule } from './fault-rules.js';

export type { FaultRule } from './fault-rules.js';

const PROCESS_SCRIPT = fileURLToPath(new URL('./fault-fs-process.js', import.meta.url));

type Command = { cmd: 'fail'; rule: FaultRule } | { cmd: 'heal'; file?: string } | { cmd: 'fired' };

export class FaultFs {
  private nextId = 1;
  private readonly pending = new Map<number, (reply: FaultReply) => void>();

  constructor(
    /** Where the file system is mounted. */
    readonly mnt: string,
    /** The ext4 directory behind it. */
    readonly backing: string,
    private readonly child: ChildProcess,
  ) {
    child.on('message', (reply: FaultReply) => {
      if (!('id' in reply)) return;
      this.pending.get(reply.id)?.(reply);
      this.pending.delete(reply.id);
    });
    // A command sent just before the process died (a test kills it; the teardown then
    // heals) gets no answer: answer it here, or its caller waits forever.
    child.on('disconnect', () => {
      for (const [id, answer] of this.pending) answer({ id, ok: false, error: 'the fault file system exited' });
      this.pending.clear();
    });
  }

  /** The file system's process (a test may kill it to check the cleanup). */
  get pid(): number | undefined {
    return this.child.pid;
  }

  /** A path through the fault file system (what the daemon under test is given). */
  path(...parts: string[]): string {
    return join(this.mnt, ...parts);
  }

  /** The same file on ext4, bypassing the faults (what is really on disk). */
  backingPath(...parts: string[]): string {
    return join(this.backing, ...parts);
  }

  private async send(command: Command): Promise<number> {
    if (this.child.exitCode !== null || !this.child.connected) throw new Error('the fault file system is not running');
    const id = this.nextId++;
    const reply = await new Promise<FaultReply>((resolve) => {
      this.pending.set(id, resolve);
      this.child.send({ id, ...command } as FaultRequest);
    });
    if (!('ok' in reply) || !reply.ok) throw new Error(`fault file system: ${'error' in reply ? reply.error : 'no answer'}`);
    return reply.fired ?? 0;
  }

  /** Add a rule (a failure and/or a delay); requests that arrive after this resolves obey it. */
  async fail(rule: FaultRule): Promise<void> {
    await this.send({ cmd: 'fail', rule });
  }

  /** Remove every rule (or one file's). */
  async heal(file?: string): Promise<void> {
    await this.send(file === undefined ? { cmd: 'heal' } : { cmd: 'heal', file });
  }

  /** Requests failed or delayed so far, over the life of the file system. */
  fired(): Promise<number> {
    return this.send({ cmd: 'fired' });
  }

  /** Wait until `count` requests in all have been failed or delayed (to act while one is held). */
  async waitFired(count: number, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while ((await this.fired()) < count) {
      if (Date.now() > deadline) throw new Error(`fewer than ${count} faults fired within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Unmount and stop the process (idempotent; the teardown calls it too). */
  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
      if (this.child.connected) await this.heal().catch(() => undefined);
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(timer);
    }
    if (await isMounted(this.mnt)) {
      const r = await run('fusermount', ['-u', this.mnt]);
      if (r.code !== 0) await run('umount', ['-l', this.mnt]);
    }
  }
}

/** Start a fault file system over a fresh ext4 directory; stopped at teardown. */
export async function startFaultFs(t: ExecutionContext): Promise<FaultFs> {
  await buildFaultFuse();
  const dir = await scratchDir(t);
  const backing = join(dir, 'backing');
  const mnt = join(dir, 'faultfs');
  await fsp.mkdir(backing);
  await fsp.mkdir(mnt);
  const child = fork(PROCESS_SCRIPT, [backing, mnt], { stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const ffs = new FaultFs(mnt, backing, child);
  t.teardown(() => ffs.stop());
  await new Promise<void>((resolve, reject) => {
    const onExit = (code: number | null): void => reject(new Error(`the fault file system exited (${code}) before it was mounted: ${stderr.trim()}`));
    child.once('exit', onExit);
    child.on('message', (m: FaultReply) => {
      if ('ready' in m) {
        child.off('exit', onExit);
        resolve();
      }
    });
  });
  return ffs;
}
