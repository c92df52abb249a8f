/**
 * `node dist/bench/cbt-state.js [DIR]`: how long saving and loading change tracking
 * takes for the largest default map (2M blocks: a 2 TiB origin at 1 MiB blocks), on a
 * real file system (default: /var/tmp). Save = encode + checksum + temporary file +
 * fsync + rename + directory fsync; load = read + checksum + decode. Prints the median
 * of 9 rounds and the file size; no mount involved (a mount adds one fingerprint).
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { loadCbtState, saveCbtState, type CbtState } from '../src/storage/cbt-state-file.js';

const BLOCKS = 2 ** 21;
const ROUNDS = 9;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? NaN;
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t) / 1e6;
}

const dir = await fsp.mkdtemp(join(process.argv[2] ?? '/var/tmp', 'blksnapfs-cbt-bench-'));
try {
  const map = new Uint8Array(BLOCKS);
  for (let i = 0; i < BLOCKS; i += 7) map[i] = (i % 255) + 1;
  const state: CbtState = {
    header: {
      state: 'clean', block_size: 2 ** 20, block_count: BLOCKS, generation_id: '00000000-0000-4000-8000-000000000000',
      generation_started: new Date().toISOString(), generation_reason: 'first', active_number: 17, saved_at: new Date().toISOString(),
      origin_path: '/srv/2tib.img',
      origin: { kind: 'file', size: 2 * 2 ** 40, file: { dev: '8:1', ino: '12', size: 2 * 2 ** 40, mtimeNs: '1', ctimeNs: '1' }, rdev: null, diskseq: null, bootId: null, writeCounters: null, backingFile: null },
    },
    map,
  };
  const path = join(dir, 'origin.cbt');
  const saves: number[] = [];
  const loads: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    saves.push(await timed(() => saveCbtState(path, state)));
    loads.push(await timed(async () => {
      const loaded = await loadCbtState(path);
      if (loaded.kind !== 'ok') throw new Error(`load failed: ${loaded.kind}`);
    }));
  }
  const size = (await fsp.stat(path)).size;
  process.stdout.write(`cbt state, ${BLOCKS} blocks: save ${median(saves).toFixed(1)} ms, load ${median(loads).toFixed(1)} ms (median of ${ROUNDS}), file ${size} bytes\n`);
} finally {
  await fsp.rm(dir, { recursive: true, force: true });
}
