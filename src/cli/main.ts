/**
 * blksnapfs: the command-line tool. Every command prints one clear stderr line and
 * exits non-zero on failure; reporting commands take --json.
 */
import { Command, Option } from 'commander';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join, resolve } from 'node:path';
import { EXIT_USAGE, launch } from '../daemon/launch.js';
import { OPTION_TABLE, applyOption, emptyOptions, parseOptionString } from '../daemon/options.js';
import { BlksnapError } from '../errors.js';
import { humanSize } from '../sizes.js';
import { destroySnapshot, readInfo, readStatus, sendControl } from './client.js';
import { DEFAULT_FREEZE_MS, takeCoherentSet } from './coherent-take.js';
import { registerCbtCommands } from './cbt-commands.js';
import { registerBackupCommands } from './backup-commands.js';
import { followEvents } from './follow-events.js';
import { escapeControlsJson, formatEventLine } from './event-line.js';

const execFileP = promisify(execFile);

/** Turn an fs or BlksnapError into the one line a user reads. */
export function describeError(err: unknown): string {
  if (err instanceof BlksnapError) return `${err.message} (${err.code})`;
  if (err instanceof Error) return err.message;
  return String(err);
}

function print(json: boolean, value: unknown, text: () => string): void {
  process.stdout.write(json ? `${JSON.stringify(value, null, 2)}\n` : text());
}

async function waitForExit(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      process.kill(pid, 0);
    } catch {
      return true;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

export function buildProgram(): Command {
  const program = new Command('blksnapfs')
    .description('Block-device snapshots with blksnap semantics, through a FUSE mount')
    .showHelpAfterError()
    .exitOverride();

  const mount = program
    .command('mount')
    .description('mount ORIGIN (disk image or block device) on MOUNTPOINT')
    .argument('<origin>', 'disk image file or block device')
    .argument('<mountpoint>', 'empty directory to mount on')
    .option('-o, --options <list>', 'mount(8)-style option list, e.g. diff_size=1G,chunk_size=64K');
  for (const spec of OPTION_TABLE) {
    const flag = `--${spec.name.replace(/_/g, '-')}`;
    mount.addOption(new Option(spec.kind === 'flag' ? flag : `${flag} <value>`, spec.help));
  }
  mount.action(async (origin: string, mountpoint: string, flags: Record<string, string | boolean | undefined>) => {
    const opts = emptyOptions();
    try {
      if (typeof flags['options'] === 'string') parseOptionString(opts, flags['options']);
      for (const spec of OPTION_TABLE) {
        const key = spec.name.replace(/_([a-z])/g, (_m, c: string) => c.toUpperCase());
        const v = flags[key];
        if (v === undefined || v === false) continue;
        applyOption(opts, spec.name, v === true ? undefined : v);
      }
    } catch (err) {
      process.stderr.write(`blksnapfs: ${describeError(err)}\n`);
      process.exitCode = EXIT_USAGE;
      return;
    }
    process.exitCode = await launch(origin, mountpoint, opts);
  });

  program
    .command('umount')
    .alias('unmount')
    .description('unmount and wait for the daemon to finish closing')
    .argument('<mountpoint>')
    .action(async (mountpoint: string) => {
      const mnt = resolve(mountpoint);
      const status = await readStatus(mnt);
      try {
        await execFileP('fusermount', ['-u', mnt]);
      } catch (err) {
        const stderr = (err as { stderr?: string }).stderr ?? '';
        throw new Error(`cannot unmount ${mnt}: ${stderr.trim().replace(/^fusermount: /, '') || describeError(err)}`);
      }
      if (!(await waitForExit(status.pid, 30_000))) throw new Error(`daemon ${status.pid} did not exit within 30 s`);
    });

  const snapshot = program.command('snapshot').description('take, list and destroy snapshots');
  snapshot
    .command('take')
    .description('take a snapshot (mkdir MOUNT/snapshots/NAME); with several mounts, one coherent snapshot of all of them')
    .argument('<mount-and-name...>', 'MOUNT [MOUNT...] NAME')
    .option('--fsfreeze <dir>', 'fsfreeze the file system mounted at DIR around the take (repeatable)', (v: string, all: string[]) => [...all, v], [])
    .option('--freeze-timeout <ms>', 'with several mounts: each mount thaws by itself after this long (at most 60000)', String(DEFAULT_FREEZE_MS))
    .option('--json', 'print the new snapshot as JSON (an array of them with several mounts)')
    .addHelpText('after', `
With several mounts: fsfreeze -f each DIR, freeze every mount (each under a token of its
own), mkdir NAME in each, thaw every mount by its token, fsfreeze -u each DIR. Every thaw
happens on every error and on SIGINT/SIGTERM; if any take fails, or a mount's freeze ran
out before its thaw, the snapshots already taken are destroyed and the command fails.`)
    .action(async (args: string[], o: { json?: boolean; fsfreeze: string[]; freezeTimeout: string }) => {
      const name = args[args.length - 1];
      const mounts = args.slice(0, -1);
      if (name === undefined || mounts.length === 0) throw BlksnapError.of('EINVAL', 'usage: snapshot take MOUNT [MOUNT...] NAME');
      const freezeMs = /^\d{1,9}$/.test(o.freezeTimeout) ? Number(o.freezeTimeout) : NaN;
      const set = await takeCoherentSet({ mounts, name, fsfreeze: o.fsfreeze, freezeMs });
      const one = set.length === 1 ? set[0] : undefined;
      if (one !== undefined) {
        print(o.json === true, { ...one.info, mount: one.mount }, () => `${one.info.name} ${one.info.uuid} ${one.info.created}\n`);
      } else {
        print(o.json === true, set.map((m) => ({ ...m.info, mount: m.mount })), () =>
          set.map((m) => `${m.mount}\t${m.info.name} ${m.info.uuid} ${m.info.created}\n`).join(''));
      }
    });
  snapshot
    .command('list')
    .description('list the snapshots of a mount')
    .argument('<mountpoint>')
    .option('--json', 'print JSON')
    .action(async (mnt: string, o: { json?: boolean }) => {
      const status = await readStatus(mnt);
      const infos = await Promise.all(status.snapshots.map((s) => readInfo(mnt, s.name).catch(() => null)));
      const list = infos.filter((i) => i !== null);
      print(o.json === true, list, () =>
        list.map((i) => `${i.name}\t${i.state}\t${i.created}\tchanges_number=${i.changes_number}\n`).join(''));
    });
  snapshot
    .command('destroy')
    .description('destroy a snapshot (same as rmdir MOUNT/snapshots/NAME)')
    .argument('<mountpoint>')
    .argument('<name>')
    .action(async (mnt: string, name: string) => destroySnapshot(mnt, name));

  program
    .command('status')
    .description('show the state of a mount')
    .argument('<mountpoint>')
    .option('--json', 'print the raw JSON of MOUNT/status')
    .action(async (mnt: string, o: { json?: boolean }) => {
      const s = await readStatus(mnt);
      const d = s['diff_storage'] as { size: number; used: number; free: number };
      print(o.json === true, s, () =>
        [
          `origin     ${s.origin.path} (${humanSize(s.origin.size)})`,
          `storage    ${humanSize(d.used)} used of ${humanSize(d.size)}, ${humanSize(d.free)} free`,
          `snapshots  ${s.snapshots.length === 0 ? '(none)' : s.snapshots.map((x) => `${x.name}${x.state === 'ok' ? '' : ` [${x.state}]`}`).join(' ')}`,
          '',
        ].join('\n'));
    });

  program
    .command('events')
    .description('print the event stream (follows until interrupted)')
    .argument('<mountpoint>')
    .option('--json', 'print the raw JSON lines')
    .action(async (mnt: string, o: { json?: boolean }) => {
      // Never raw: event fields may carry terminal escape sequences (see event-line.ts).
      for await (const line of followEvents(mnt)) {
        process.stdout.write(`${o.json === true ? escapeControlsJson(line) : formatEventLine(line)}\n`);
      }
    });

  const storage = program.command('storage').description('manage the difference storage');
  storage
    .command('append')
    .description('add a preallocated file to the difference storage while snapshots are held')
    .argument('<mountpoint>')
    .argument('<path>', 'new file (must not exist, or be empty)')
    .argument('<size>', 'size, e.g. 1G')
    // Always a JSON string: any path (spaces, quotes) reaches the daemon as one word.
    .action(async (mnt: string, path: string, size: string) => sendControl(mnt, `storage-append ${JSON.stringify(resolve(path))} ${size}`));

  registerCbtCommands(program);
  registerBackupCommands(program);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'commander.helpDisplayed' || code === 'commander.version' || code === 'commander.help') return 0;
    if (typeof code === 'string' && code.startsWith('commander.')) return EXIT_USAGE;
    process.stderr.write(`blksnapfs: ${describeError(err)}\n`);
    return 1;
  }
}
