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
import { destroySnapshot, readInfo, readStatus, sendControl, takeSnapshot } from './client.js';
import { registerCbtCommands } from './cbt-commands.js';
import { registerBackupCommands } from './backup-commands.js';
import { followEvents } from './follow-events.js';

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
    .description('take a snapshot (same as mkdir MOUNT/snapshots/NAME)')
    .argument('<mountpoint>')
    .argument('<name>')
    .option('--json', 'print the new snapshot as JSON')
    .action(async (mnt: string, name: string, o: { json?: boolean }) => {
      await takeSnapshot(mnt, name);
      const info = await readInfo(mnt, name);
      print(o.json === true, info, () => `${info.name} ${info.uuid} ${info.created}\n`);
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
      for await (const line of followEvents(mnt)) {
        if (o.json === true) process.stdout.write(`${line}\n`);
        else {
          const { seq, time, type, ...rest } = JSON.parse(line) as Record<string, unknown>;
          const fields = Object.entries(rest).map(([k, v]) => `${k}=${String(v)}`).join(' ');
          process.stdout.write(`${String(time)} #${String(seq ?? '-')} ${String(type)} ${fields}\n`);
        }
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
