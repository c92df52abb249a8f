/** blksnapfs cbt info|changed|dirty: change tracking from the shell. */
import type { Command } from 'commander';
import { readCbtmap, readInfo, readStatus, sendControl } from './client.js';

export interface ChangedRange {
  offset: number;
  length: number;
}

/** Byte ranges of the blocks whose map byte is greater than `since`, merged. */
export function changedRanges(map: Uint8Array, since: number, blockSize: number, capacity: number): ChangedRange[] {
  const ranges: ChangedRange[] = [];
  let start = -1;
  for (let i = 0; i <= map.length; i++) {
    const changed = i < map.length && (map[i] ?? 0) > since;
    if (changed && start < 0) start = i;
    if (!changed && start >= 0) {
      const offset = start * blockSize;
      ranges.push({ offset, length: Math.min(i * blockSize, capacity) - offset });
      start = -1;
    }
  }
  return ranges;
}

export interface TrackingStatus {
  generation_id: string;
  changes_number: number;
  active_number: number;
  generation_started: string;
  generation_reason: string;
  resumed: boolean;
  resumed_from_save: string | null;
  state_file: string | null;
}

/**
 * The facts `cbt info` prints. The continuity facts (resumed, since when) belong to a
 * generation, so a snapshot of an older generation (before a wrap) shows none.
 */
async function cbtFacts(mnt: string, name: string | undefined): Promise<Record<string, unknown>> {
  const status = await readStatus(mnt);
  const tracking = status['change_tracking'] as TrackingStatus;
  const continuity = {
    resumed: tracking.resumed,
    resumed_from_save: tracking.resumed_from_save,
    generation_started: tracking.generation_started,
    generation_reason: tracking.generation_reason,
  };
  if (name === undefined) {
    return {
      generation_id: tracking.generation_id, changes_number: tracking.changes_number, active_number: tracking.active_number,
      block_size: status['block_size'], block_count: status['block_count'], device_capacity: status.origin.size,
      ...continuity, state_file: tracking.state_file,
    };
  }
  const i = await readInfo(mnt, name);
  return {
    generation_id: i.generation_id, changes_number: i.changes_number, block_size: i.block_size, block_count: i.block_count, device_capacity: i.device_capacity,
    ...(i.generation_id === tracking.generation_id ? continuity : {}),
  };
}

export function registerCbtCommands(program: Command): void {
  const cbt = program.command('cbt').description('change block tracking');
  cbt
    .command('info')
    .description("change-tracking facts: the mount's (whether resumed at mount, and since when), or a snapshot's")
    .argument('<mountpoint>')
    .argument('[name]', 'a snapshot (default: the active tracking of the mount)')
    .option('--json', 'print JSON')
    .action(async (mnt: string, name: string | undefined, o: { json?: boolean }) => {
      const facts = await cbtFacts(mnt, name);
      process.stdout.write(o.json === true ? `${JSON.stringify(facts, null, 2)}\n`
        : Object.entries(facts).map(([k, v]) => `${k} ${String(v)}\n`).join(''));
    });
  cbt
    .command('changed')
    .description('byte ranges changed since the snapshot whose changes_number is N')
    .argument('<mountpoint>')
    .argument('<name>')
    .requiredOption('--since <n>', 'changes_number of the previous backup')
    .option('--generation <id>', 'generation_id of the previous backup (refused if it differs)')
    .option('--json', 'print JSON')
    .action(async (mnt: string, name: string, o: { since: string; generation?: string; json?: boolean }) => {
      const since = Number(o.since);
      if (!Number.isInteger(since) || since < 0 || since > 255) throw new Error('--since must be a number from 0 to 255');
      const info = await readInfo(mnt, name);
      if (o.generation !== undefined && o.generation !== info.generation_id) {
        throw new Error(`generation changed (${o.generation} -> ${info.generation_id}): a full backup is needed`);
      }
      if (since > info.changes_number) {
        throw new Error(`--since ${since} is newer than snapshot ${name} (changes_number ${info.changes_number}): that is not the previous backup of this snapshot's history`);
      }
      const map = await readCbtmap(mnt, name);
      const ranges = changedRanges(map, since, info.block_size, info.device_capacity);
      process.stdout.write(o.json === true
        ? `${JSON.stringify({ generation_id: info.generation_id, changes_number: info.changes_number, since, ranges }, null, 2)}\n`
        : ranges.map((r) => `${r.offset} ${r.length}\n`).join(''));
    });
  cbt
    .command('dirty')
    .description('mark a byte range as changed (blksnap cbtdirty)')
    .argument('<mountpoint>')
    .argument('<offset>')
    .argument('<length>')
    .action(async (mnt: string, offset: string, length: string) => sendControl(mnt, `cbt-dirty ${offset} ${length}`));
}
