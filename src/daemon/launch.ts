/**
 * Starting a mount. In the background (the default) the parent forks the daemon and
 * returns only when the daemon reports the mount live (exit 0) or reports why it failed
 * (one stderr line, exit 32), the way libfuse's daemonize pipe and rclone work. With
 * -o foreground the daemon runs in this process and logs to stderr.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { resolve } from 'node:path';
import { createLogger } from './logger.js';
import { Daemon } from './daemon.js';
import { toOptionString, type MountOptions } from './options.js';

export const EXIT_USAGE = 1;
export const EXIT_MOUNT_FAILED = 32;

type DaemonMessage = { type: 'ready' } | { type: 'error'; message: string };

const entry = fileURLToPath(new URL('./entry.js', import.meta.url));

export async function runForeground(origin: string, mountpoint: string, opts: MountOptions, notify?: (m: DaemonMessage) => void): Promise<number> {
  const log = createLogger(opts);
  let daemon: Daemon;
  try {
    daemon = await Daemon.start(origin, mountpoint, opts, log);
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    log.error({ err: message }, 'mount failed');
    if (notify) notify({ type: 'error', message });
    else process.stderr.write(`mount.blksnapfs: ${message}\n`);
    return EXIT_MOUNT_FAILED;
  }
  // A last line of defence: a promise nobody awaited must not take the mount down (and
  // with it whatever uses /origin). Each one is a bug, logged as such.
  process.on('unhandledRejection', (err: unknown) => {
    log.error({ err: err instanceof Error ? (err.stack ?? err.message) : String(err) }, 'bug: unhandled rejection');
  });
  const onSignal = (signal: string): void => {
    log.info({ signal }, 'unmount requested');
    daemon.requestUnmount().catch((err: unknown) => log.warn({ err: err instanceof Error ? err.message : String(err) }, 'cannot unmount yet'));
  };
  for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(s, onSignal);
  notify?.({ type: 'ready' });
  await daemon.run();
  return 0;
}

/**
 * The daemon's environment: ours, except that BLKSNAPFS_DAEMON_PRELOAD becomes the
 * daemon's LD_PRELOAD (and only the daemon's). Sanitizer runs of the addon use it
 * (scripts/sanitize-tests.sh): preloading ASan into every tool a test runs (dd, mkfs,
 * fio, ...) would slow them all down and test them, not us.
 */
function daemonEnv(): NodeJS.ProcessEnv {
  const preload = process.env['BLKSNAPFS_DAEMON_PRELOAD'];
  if (preload === undefined || preload === '') return process.env;
  return { ...process.env, LD_PRELOAD: preload };
}

export function runBackground(origin: string, mountpoint: string, opts: MountOptions): Promise<number> {
  return new Promise((resolveExit) => {
    // The daemon runs in / (it must not keep the caller's directory busy): paths are made absolute here.
    const child = spawn(process.execPath, [entry, resolve(origin), resolve(mountpoint), toOptionString(opts)], {
      cwd: '/',
      env: daemonEnv(),
      detached: true,
      stdio: ['ignore', 'ignore', 'ignore', 'ipc'],
    });
    let settled = false;
    const settle = (code: number, message?: string): void => {
      if (settled) return;
      settled = true;
      if (message !== undefined) process.stderr.write(`mount.blksnapfs: ${message}\n`);
      if (child.connected) child.disconnect();
      child.unref();
      resolveExit(code);
    };
    child.on('message', (m: DaemonMessage) => {
      if (m.type === 'ready') settle(0);
      else settle(EXIT_MOUNT_FAILED, m.message);
    });
    child.on('error', (err) => settle(EXIT_MOUNT_FAILED, `cannot start the daemon: ${err.message}`));
    child.on('exit', (code, signal) => settle(EXIT_MOUNT_FAILED, `the daemon exited before the mount was ready (${signal ?? `status ${code ?? '?'}`})`));
  });
}

export function launch(origin: string, mountpoint: string, opts: MountOptions): Promise<number> {
  return opts.foreground ? runForeground(origin, mountpoint, opts) : runBackground(origin, mountpoint, opts);
}
