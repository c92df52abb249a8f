/**
 * blksnapfs under test: the daemon is started the way mount.blksnapfs starts it
 * (`node dist/src/daemon/entry.js ORIGIN MNT OPTIONS`, detached, "ready" over IPC), so
 * the bench knows its pid and can add node flags (--cpu-prof) for profiling runs.
 * Unmounting goes through `blksnapfs umount`, which waits for the daemon to exit.
 */
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { alive, run, stopping, StoppingError, waitExit, vmHWMKiB } from './proc.js';
import type { Cleanup } from './cleanup.js';
import type { TransportStats } from '../../src/fuse/transport.js';

export const ROOT = resolve(fileURLToPath(new URL('../../..', import.meta.url)));
const ENTRY = join(ROOT, 'dist', 'src', 'daemon', 'entry.js');
const CLI = join(ROOT, 'bin', 'blksnapfs.js');

export interface BsfStatus {
  pid: number;
  chunk_size: number;
  chunk_count: number;
  block_size: number;
  block_count: number;
  diff_storage: { saved_chunks: number; hole_chunks?: number; used: number; size: number };
  snapshots: Array<{ name: string; state: string }>;
  transport?: TransportStats;
}

export interface MountSpec {
  origin: string;
  mnt: string;
  /** -o option string (diff_storage=...,diff_size=...,chunk_size=...). */
  options: string;
  /** Extra node flags for the daemon, e.g. ['--cpu-prof', '--cpu-prof-dir=/tmp/p']. */
  nodeFlags?: readonly string[];
}

async function isMounted(mnt: string): Promise<boolean> {
  const text = await fsp.readFile('/proc/self/mountinfo', 'utf8');
  return text.split('\n').some((l) => l.split(' ')[4] === mnt);
}

export class Blksnapfs {
  private undo: (() => Promise<void>) | null = null;

  private constructor(readonly mnt: string, readonly pid: number) {}

  get origin(): string {
    return join(this.mnt, 'origin');
  }

  image(name: string): string {
    return join(this.mnt, 'snapshots', name, 'image');
  }

  static async mount(spec: MountSpec, cleanup: Cleanup): Promise<Blksnapfs> {
    if (stopping.now) throw new StoppingError();
    await fsp.mkdir(spec.mnt, { recursive: true });
    const child = spawn(process.execPath, [...(spec.nodeFlags ?? []), ENTRY, spec.origin, spec.mnt, spec.options], {
      detached: true,
      stdio: ['ignore', 'ignore', 'ignore', 'ipc'],
    });
    if (child.pid === undefined) throw new Error('cannot start the blksnapfs daemon');
    const pid = child.pid;
    const b = new Blksnapfs(spec.mnt, pid);
    b.undo = cleanup.add(`blksnapfs on ${spec.mnt}`, () => b.teardown());
    await new Promise<void>((resolveReady, reject) => {
      child.on('message', (m: { type: string; message?: string }) => {
        if (m.type === 'ready') resolveReady();
        else reject(new Error(`mount of ${spec.origin} failed: ${m.message ?? 'unknown error'}`));
      });
      child.on('exit', (code, signal) => reject(new Error(`blksnapfs daemon exited before the mount was ready (${signal ?? code ?? '?'})`)));
    });
    if (child.connected) child.disconnect();
    child.unref();
    return b;
  }

  async status(): Promise<BsfStatus> {
    return JSON.parse(await fsp.readFile(join(this.mnt, 'status'), 'utf8')) as BsfStatus;
  }

  /** mkdir snapshots/NAME; returns how long the mkdir took, in ms. */
  async take(name: string): Promise<number> {
    const started = process.hrtime.bigint();
    await fsp.mkdir(join(this.mnt, 'snapshots', name));
    return Number(process.hrtime.bigint() - started) / 1e6;
  }

  async destroy(name: string): Promise<void> {
    await fsp.rmdir(join(this.mnt, 'snapshots', name));
  }

  async destroyAll(): Promise<void> {
    for (const s of (await this.status()).snapshots) await this.destroy(s.name);
  }

  /** Peak resident set of the daemon (VmHWM), KiB. */
  vmHWMKiB(): Promise<number> {
    return vmHWMKiB(this.pid);
  }

  /** Unmount and wait for the daemon (idempotent). */
  async stop(): Promise<void> {
    const undo = this.undo;
    this.undo = null;
    if (undo !== null) await undo();
  }

  /** `blksnapfs umount`; if that fails: fusermount, and as a last resort kill the daemon. */
  private async teardown(): Promise<void> {
    if (await isMounted(this.mnt)) {
      const r = await run(process.execPath, [CLI, 'umount', this.mnt], { timeoutMs: 60_000, teardown: true });
      if (r.code !== 0) {
        process.stderr.write(`bench: blksnapfs umount ${this.mnt}: ${r.stderr.trim()}\n`);
        for (let i = 0; i < 20 && (await isMounted(this.mnt)); i++) {
          const f = await run('fusermount', ['-u', this.mnt], { teardown: true });
          if (f.code === 0) break;
          await new Promise((r2) => setTimeout(r2, 250));
        }
      }
    }
    if (!(await waitExit(this.pid, 30_000)) && alive(this.pid)) {
      process.kill(this.pid, 'SIGKILL');
      await waitExit(this.pid, 5000);
    }
    if (await isMounted(this.mnt)) await run('fusermount', ['-uz', this.mnt], { teardown: true });
    await fsp.rmdir(this.mnt).catch(() => undefined);
  }
}
