/**
 * Test fixtures against the real thing: image files on ext4 (never tmpfs, which hides
 * O_DIRECT alignment bugs), real mounts through /dev/fuse, real loop devices. Every
 * resource registers its teardown the moment it is created, so a failing test still
 * unmounts, detaches and stops its daemon.
 */
import type { ExecutionContext } from 'ava';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp, existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';

export const execFileP = promisify(execFile);
export const ROOT = resolve(fileURLToPath(new URL('../../..', import.meta.url)));
export const MOUNT_HELPER = join(ROOT, 'bin', 'mount.blksnapfs.js');
export const CLI = join(ROOT, 'bin', 'blksnapfs.js');
/** Scratch space on a real disk file system (ext4 here), not tmpfs. */
export const SCRATCH = process.env['BLKSNAPFS_TEST_DIR'] ?? '/var/tmp/blksnapfs-tests';

export const MiB = 1024 * 1024;
export const KiB = 1024;

if (!existsSync('/dev/fuse')) {
  // Fail loudly: a FUSE test suite that skips itself proves nothing.
  throw new Error('/dev/fuse is missing: these tests need FUSE (modprobe fuse)');
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run a command; never throws for a non-zero exit (the test asserts on `code`). */
export async function run(cmd: string, args: string[], options: { timeoutMs?: number; input?: string } = {}): Promise<RunResult> {
  return new Promise((resolvePromise) => {
    const child = spawn(cmd, args, { stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 120_000);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolvePromise({ code: code ?? (signal ? 128 : 1), stdout, stderr });
    });
    if (child.stdin !== null) {
      child.stdin.on('error', () => undefined); // the command may exit without reading
      child.stdin.end(options.input);
    }
  });
}

/** Run a command and fail the test (with its stderr) unless it exits 0. */
export async function must(cmd: string, args: string[], options: { timeoutMs?: number; input?: string } = {}): Promise<string> {
  const r = await run(cmd, args, options);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr.trim()} ${r.stdout.trim().slice(-2000)}`);
  return r.stdout;
}

export async function sh(script: string, timeoutMs?: number): Promise<string> {
  return must('bash', ['-euo', 'pipefail', '-c', script], timeoutMs === undefined ? {} : { timeoutMs });
}

/** A fresh scratch directory, removed at teardown. */
export async function scratchDir(t: ExecutionContext): Promise<string> {
  await fsp.mkdir(SCRATCH, { recursive: true });
  const dir = await fsp.mkdtemp(join(SCRATCH, 't-'));
  t.teardown(async () => {
    await fsp.rm(dir, { recursive: true, force: true }).catch(() => undefined);
  });
  return dir;
}

/** Write `size` bytes of random data (or a sparse file with `sparse`). */
export async function makeImage(path: string, size: number, opts: { sparse?: boolean } = {}): Promise<void> {
  if (opts.sparse === true) {
    await must('truncate', ['-s', String(size), path]);
    return;
  }
  const fh = await fsp.open(path, 'w');
  try {
    const block = 4 * MiB;
    for (let off = 0; off < size; off += block) {
      const n = Math.min(block, size - off);
      await fh.write(randomBytes(n), 0, n, off);
    }
  } finally {
    await fh.close();
  }
}

export async function isMounted(mnt: string): Promise<boolean> {
  const text = await fsp.readFile('/proc/self/mountinfo', 'utf8');
  return text.split('\n').some((l) => l.split(' ')[4] === mnt);
}

export async function daemonPids(mnt: string): Promise<number[]> {
  const r = await run('pgrep', ['-f', `daemon/entry.js .* ${mnt} `]);
  return r.stdout.split('\n').filter((s) => s.trim().length > 0).map(Number);
}

/** Unmount whatever way works, then make sure no daemon for `mnt` survives. */
export async function forceUnmount(mnt: string): Promise<void> {
  if (await isMounted(mnt)) {
    const r = await run('fusermount', ['-u', mnt]);
    if (r.code !== 0) await run('umount', ['-l', mnt]);
  }
  for (let i = 0; i < 50; i++) {
    const pids = await daemonPids(mnt);
    if (pids.length === 0) return;
    if (i === 30) for (const pid of pids) process.kill(pid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 100));
  }
}

export interface Mounted {
  dir: string;
  origin: string;
  mnt: string;
  diff: string;
  log: string;
  /** Paths inside the mount. */
  path(...parts: string[]): string;
  status(): Promise<Record<string, unknown>>;
  info(name: string): Promise<Record<string, unknown>>;
}

export interface MountSpec {
  size?: number;
  sparse?: boolean;
  /** -o options besides diff_storage and log (e.g. "diff_size=64M,chunk_size=64K"). */
  options?: string;
  /** Use this existing origin instead of making one. */
  origin?: string;
  /** The difference storage and log paths (default: files in the scratch directory). */
  diff?: string;
  log?: string;
}

/**
 * The transport mountImage asks for when the spec names none: the default (libfuse3),
 * or what a compatibility run sets (test/compat-fuse-native.test.ts).
 */
let testTransport: 'libfuse3' | 'fuse-native' | null = null;
export function setTestTransport(name: 'libfuse3' | 'fuse-native'): void {
  testTransport = name;
}

/** Make an origin image, mount it, and register the unmount. */
export async function mountImage(t: ExecutionContext, spec: MountSpec = {}): Promise<Mounted> {
  const dir = await scratchDir(t);
  const origin = spec.origin ?? join(dir, 'disk.img');
  if (spec.origin === undefined) await makeImage(origin, spec.size ?? 64 * MiB, spec.sparse === true ? { sparse: true } : {});
  const mnt = join(dir, 'mnt');
  const diff = spec.diff ?? join(dir, 'disk.diff');
  const log = spec.log ?? join(dir, 'daemon.log');
  await fsp.mkdir(mnt);
  const transport = testTransport !== null && !(spec.options ?? '').includes('transport=') ? `transport=${testTransport}` : '';
  const options = [`diff_storage=${diff}`, `log=${log}`, 'log_level=debug', spec.options ?? 'diff_size=64M', transport].filter((s) => s.length > 0).join(',');
  t.teardown(() => forceUnmount(mnt));
  const r = await run(process.execPath, [MOUNT_HELPER, origin, mnt, '-o', options]);
  if (r.code !== 0) throw new Error(`mount failed (${r.code}): ${r.stderr.trim()}`);
  const m: Mounted = {
    dir, origin, mnt, diff, log,
    path: (...parts) => join(mnt, ...parts),
    status: async () => JSON.parse(await fsp.readFile(join(mnt, 'status'), 'utf8')) as Record<string, unknown>,
    info: async (name) => JSON.parse(await fsp.readFile(join(mnt, 'snapshots', name, 'info'), 'utf8')) as Record<string, unknown>,
  };
  return m;
}

/** What a loop device is attached to now ('' when it is free). */
async function loopBacking(dev: string): Promise<string> {
  return fsp.readFile(`/sys/block/${dev.replace('/dev/', '')}/loop/backing_file`, 'utf8').then((s) => s.trim(), () => '');
}

/**
 * Attach a loop device (read-only with `readOnly`), detached at teardown, but only if
 * it still backs the same file: a test that detached it itself may have let another
 * test, running in parallel, get the same number, and detaching that one would pull a
 * device from under its file system.
 */
export async function loopDevice(t: ExecutionContext, file: string, readOnly = false): Promise<string> {
  const dev = (await must('losetup', [...(readOnly ? ['-r'] : []), '-f', '--show', file])).trim();
  const backing = await loopBacking(dev);
  t.teardown(async () => {
    if (backing !== '' && (await loopBacking(dev)) !== backing) return;
    await run('losetup', ['-d', dev]);
  });
  return dev;
}

/** Mount a block device, unmounted at teardown. */
export async function mountDevice(t: ExecutionContext, dev: string, dir: string, options: string[] = []): Promise<void> {
  await fsp.mkdir(dir, { recursive: true });
  await must('mount', [...options, dev, dir]);
  t.teardown(async () => {
    await run('umount', [dir]);
  });
}

/** Positional read of a whole range (through the mount, as any program would). */
export async function readRange(path: string, position: number, length: number): Promise<Buffer> {
  const fh = await fsp.open(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await fh.read(buf, done, length - done, position + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return buf.subarray(0, done);
  } finally {
    await fh.close();
  }
}

export async function writeRange(path: string, position: number, data: Buffer): Promise<void> {
  const fh = await fsp.open(path, 'r+');
  try {
    await fh.write(data, 0, data.length, position);
  } finally {
    await fh.close();
  }
}

/** Start a long-running process that is killed at teardown. */
export function background(t: ExecutionContext, cmd: string, args: string[]): ChildProcess {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  return child;
}
