/** blksnapfs backup | verify-backup: full and incremental backups driven by the cbtmap. */
import type { Command } from 'commander';
import { runBackup } from './backup-run.js';
import { verifyBackup } from './backup-verify.js';
import { createProgress, humanBytes, type ProgressMode } from './progress.js';

function progressMode(json: boolean): ProgressMode {
  if (json) return 'json';
  return process.stderr.isTTY ? 'tty' : 'plain';
}

/** Run `work` with Ctrl-C and SIGTERM turned into an abort it checks between pieces. */
async function interruptible<T>(work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const onSignal = (): void => controller.abort();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    return await work(controller.signal);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

const BACKUP_HELP = `
A full backup copies the whole snapshot image into TARGET (holes where it reads
zeros). With --since-manifest, only the blocks whose cbtmap byte is greater than
the previous backup's changes_number are copied, into a copy of the previous image
(a reflink where the file system can); if the change-tracking generation differs,
the backup falls back to a full one and says so. The image's holes (SEEK_DATA /
SEEK_HOLE) are never read: they stay holes in TARGET.

TARGET.manifest.json records generation_id, changes_number, block_size, the image
size and a sha256 per segment (1 MiB or more) of the whole image. Everything is
written to TARGET.partial and renamed into place at the end: an interrupted backup
leaves the previous TARGET and manifest as they were. TARGET.lock exists only while
a backup or verify runs.

Example (one round of an incremental loop):
  mkdir /mnt/snapshots/b2
  blksnapfs backup /mnt b2 /backup/disk.img --since-manifest /backup/disk.img.manifest.json
  rmdir /mnt/snapshots/b2
`;

export function registerBackupCommands(program: Command): void {
  program
    .command('backup')
    .description('back up a snapshot image: full, or only the blocks changed since a previous backup')
    .argument('<mountpoint>')
    .argument('<name>', 'the snapshot to back up')
    .argument('<target>', 'backup image file; TARGET.manifest.json is written next to it')
    .option('--since-manifest <file>', "the previous backup's manifest: copy only what changed since (full if the generation differs)")
    .option('--json', 'JSON lines on stdout: progress, notes, and the result last')
    .addHelpText('after', BACKUP_HELP)
    .action(async (mnt: string, name: string, target: string, o: { sinceManifest?: string; json?: boolean }) => {
      const json = o.json === true;
      const progress = createProgress(progressMode(json), 'blksnapfs backup');
      const r = await interruptible((signal) => runBackup({
        mount: mnt, name, target, progress, signal, ...(o.sinceManifest !== undefined ? { sinceManifest: o.sinceManifest } : {}),
      }));
      if (json) {
        process.stdout.write(`${JSON.stringify(r)}\n`);
        return;
      }
      const holes = r.hole_bytes > 0 ? `, ${humanBytes(r.hole_bytes)} of holes not read` : '';
      const what = r.kind === 'full'
        ? `${humanBytes(r.copied_bytes)} copied (${humanBytes(r.written_bytes)} written, the rest left sparse${holes})`
        : `${r.copied_blocks} changed block(s), ${humanBytes(r.copied_bytes)}, copied since changes_number ${r.since_changes_number ?? '?'}${holes}`;
      process.stdout.write([
        `${r.kind} backup of ${r.snapshot} to ${r.target}: ${what}; verified`,
        `generation ${r.generation_id}, changes_number ${r.changes_number}`,
        `manifest ${r.manifest}`,
        '',
      ].join('\n'));
    });

  program
    .command('verify-backup')
    .description('check a backup image against its manifest (a sha256 per segment)')
    .argument('<manifest>', 'TARGET.manifest.json')
    .option('--json', 'JSON lines on stdout: progress, and the result last')
    .action(async (manifest: string, o: { json?: boolean }) => {
      const json = o.json === true;
      const progress = createProgress(progressMode(json), 'blksnapfs verify-backup');
      const r = await interruptible((signal) => verifyBackup(manifest, progress, signal));
      process.stdout.write(json ? `${JSON.stringify(r)}\n`
        : `ok: ${r.target} matches ${r.manifest} (${r.segments} segments, ${humanBytes(r.image_size)}; snapshot ${r.snapshot}, changes_number ${r.changes_number})\n`);
    });
}
