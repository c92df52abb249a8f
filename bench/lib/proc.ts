/**
 * Running the tools the bench drives (dd, fio, mkdir, fusermount, ...): every child is
 * tracked while it runs, so that a Ctrl-C or a failure can kill the ones still busy
 * before the mounts they hold are taken down.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { promises as fsp } from 'node:fs';

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  /** Wall-clock time of the child, in seconds. */
  seconds: number;
}

export interface RunOptions {
  timeoutMs?: number;
  input?: string;
  env?: NodeJS.ProcessEnv;
  /** Teardown commands (umount, fusermount) still run while the bench is stopping. */
  teardown?: boolean;
}

const running = new Set<ChildProcess>();

/** Set once the bench is stopping (Ctrl-C, SIGTERM): no new child is started after that. */
export const stopping = { now: false };

export class StoppingError extends Error {
  constructor() {
    super('the bench is stopping');
  }
}

/** Run a command to completion; never throws for a non-zero exit. */
export function run(cmd: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  if (stopping.now && options.teardown !== true) return Promise.reject(new StoppingError());
  return new Promise((resolve) => {
    const spawnOptions: SpawnOptions = { stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] };
    if (options.env !== undefined) spawnOptions.env = options.env;
    const started = process.hrtime.bigint();
    const child = spawn(cmd, args, spawnOptions);
    running.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 600_000);
    const finish = (code: number): void => {
      clearTimeout(timer);
      running.delete(child);
      resolve({ code, stdout, stderr, seconds: Number(process.hrtime.bigint() - started) / 1e9 });
    };
    child.on('error', (err) => {
      stderr += `${err.message}\n`;
      finish(127);
    });
    child.on('close', (code, signal) => finish(code ?? (signal !== null ? 128 : 1)));
    if (child.stdin !== null) {
      child.stdin.on('error', () => undefined); // a child that exits without reading its input
      child.stdin.end(options.input ?? '');
    }
  });
}

/** Run a command and throw (with its stderr) unless it exits 0. */
export async function must(cmd: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const r = await run(cmd, args, options);
  if (r.code !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
  }
  return r;
}

/** Kill every tool child still running (used before tearing down mounts). */
export function killRunning(): void {
  for (const child of running) {
    if (child.pid !== undefined) {
      try {
        child.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** True while a process with this pid exists. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Wait until `pid` is gone; false on timeout. */
export async function waitExit(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!alive(pid)) return true;
    await sleep(50);
  }
  return !alive(pid);
}

/** Peak resident set (VmHWM) of a process, KiB; NaN when /proc does not say. */
export async function vmHWMKiB(pid: number): Promise<number> {
  const text = await fsp.readFile(`/proc/${pid}/status`, 'utf8');
  const m = /VmHWM:\s+(\d+) kB/.exec(text);
  return m === null ? NaN : Number(m[1]);
}
