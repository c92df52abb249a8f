/**
 * Change tracking on real mounts: the cbtmap marks exactly the blocks written (no more,
 * no less), is frozen at take, cbt-dirty marks exactly what it is asked, the numbering
 * wraps at 255 into a new generation (with a cbt-reset event, and backups fall back to
 * full), and a 1 TiB sparse origin costs a bounded map and bounded memory.
 */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { CLI, KiB, MiB, must, mountImage, readRange, run, scratchDir, writeRange, type Mounted } from './helpers/fixture.js';

const BS = 64 * KiB;

async function cbtmap(m: Mounted, name: string): Promise<Buffer> {
  return fsp.readFile(m.path('snapshots', name, 'cbtmap'));
}

/** The map we expect: `value` at the given blocks, `rest` (a map or 0) elsewhere. */
function expectedMap(count: number, marks: Iterable<number>, value: number, rest: Buffer | number = 0): Buffer {
  const map = typeof rest === 'number' ? Buffer.alloc(count, rest) : Buffer.from(rest);
  for (const b of marks) map[b] = value;
  return map;
}

/** Block indexes of a byte range. */
function blocksOf(offset: number, length: number, bs = BS): number[] {
  const out: number[] = [];
  for (let b = Math.floor(offset / bs); b <= Math.floor((offset + length - 1) / bs); b++) out.push(b);
  return out;
}

function differences(actual: Buffer, expected: Buffer): string {
  const diffs: string[] = [];
  for (let i = 0; i < Math.max(actual.length, expected.length) && diffs.length < 10; i++) {
    if (actual[i] !== expected[i]) diffs.push(`block ${i}: ${actual[i] ?? 'none'} (expected ${expected[i] ?? 'none'})`);
  }
  return diffs.join(', ');
}

async function cli(...args: string[]): Promise<string> {
  return must(process.execPath, [CLI, ...args]);
}

async function control(m: Mounted, line: string): Promise<void> {
  await fsp.writeFile(m.path('control'), `${line}\n`);
}

test('the cbtmap marks exactly the blocks written: aligned, unaligned, across boundaries, the last block', async (t) => {
  const SIZE = 40 * MiB + 20 * KiB; // the last block is 20 KiB long
  const COUNT = Math.ceil(SIZE / BS);
  const m = await mountImage(t, { size: SIZE, options: 'diff_size=64M,block_size=64K' });
  const origin = m.path('origin');

  await writeRange(origin, 5 * BS + 7, randomBytes(100)); // before the first snapshot
  await fsp.mkdir(m.path('snapshots', 's1'));
  const i1 = await m.info('s1');
  t.like(i1, { block_size: BS, block_count: COUNT, changes_number: 1, device_capacity: SIZE, state: 'ok' });
  t.regex(String(i1['generation_id']), /^[0-9a-f-]{36}$/);
  t.is((await fsp.stat(m.path('snapshots', 's1', 'cbtmap'))).size, COUNT);
  const map1 = await cbtmap(m, 's1');
  t.true(map1.equals(expectedMap(COUNT, [5], 1)), differences(map1, expectedMap(COUNT, [5], 1)));

  const writes: Array<[number, number]> = [
    [3 * BS, BS], //                 one whole aligned block
    [10 * BS + 100, 50], //          inside one block
    [21 * BS - 10, 20], //           across a block boundary
    [30 * BS + 5, 3 * BS], //        unaligned, four blocks (and more than one FUSE request)
    [101 * BS - 1, 1], //            the last byte of a block
    [200 * BS, 1], //                the first byte of a block
    [SIZE - 1, 1], //                the last byte of the origin (the short last block)
  ];
  const changed = new Set<number>();
  for (const [offset, length] of writes) {
    await writeRange(origin, offset, randomBytes(length));
    for (const b of blocksOf(offset, length)) changed.add(b);
  }
  t.deepEqual([...changed].sort((a, b) => a - b), [3, 10, 20, 21, 30, 31, 32, 33, 100, 200, COUNT - 1]);

  await fsp.mkdir(m.path('snapshots', 's2'));
  t.like(await m.info('s2'), { changes_number: 2, generation_id: i1['generation_id'] });
  const want2 = expectedMap(COUNT, changed, 2, expectedMap(COUNT, [5], 1));
  const map2 = await cbtmap(m, 's2');
  t.true(map2.equals(want2), differences(map2, want2));
  // Frozen at take: the writes after s1 never reach its map.
  t.true((await cbtmap(m, 's1')).equals(map1));

  // The CLI turns the map into byte ranges: merged runs, the last one cut at the end.
  const lines = (await cli('cbt', 'changed', m.mnt, 's2', '--since', '1')).trim().split('\n');
  t.deepEqual(lines, [
    `${3 * BS} ${BS}`, `${10 * BS} ${BS}`, `${20 * BS} ${2 * BS}`, `${30 * BS} ${4 * BS}`,
    `${100 * BS} ${BS}`, `${200 * BS} ${BS}`, `${(COUNT - 1) * BS} ${20 * KiB}`,
  ]);
  const since0 = JSON.parse(await cli('cbt', 'changed', m.mnt, 's2', '--since', '0', '--json')) as { ranges: Array<{ offset: number; length: number }> };
  t.true(since0.ranges.some((r) => r.offset === 5 * BS && r.length === BS), 'a block written before s1 counts since 0');
  t.is((await cli('cbt', 'changed', m.mnt, 's2', '--since', '2')).trim(), '');
  const tooNew = await run(process.execPath, [CLI, 'cbt', 'changed', m.mnt, 's2', '--since', '3']);
  t.not(tooNew.code, 0, 'a --since newer than the snapshot is a mix-up, not "nothing changed"');
  t.regex(tooNew.stderr, /newer than snapshot s2/);
  const info = JSON.parse(await cli('cbt', 'info', m.mnt, 's2', '--json')) as Record<string, unknown>;
  const started = ((await m.status())['change_tracking'] as { generation_started: string }).generation_started;
  t.deepEqual(info, {
    generation_id: i1['generation_id'], changes_number: 2, block_size: BS, block_count: COUNT, device_capacity: SIZE,
    // A snapshot of the current generation also says how that generation began (here: this mount).
    resumed: false, resumed_from_save: null, generation_started: started, generation_reason: 'first',
  });
  const wrongGen = await run(process.execPath, [CLI, 'cbt', 'changed', m.mnt, 's2', '--since', '1', '--generation', 'not-this-one']);
  t.not(wrongGen.code, 0);
  t.regex(wrongGen.stderr, /generation changed.*full backup/);

  const status = await m.status();
  t.like(status, { change_tracking: { generation_id: i1['generation_id'], changes_number: 2, active_number: 3 }, block_size: BS, block_count: COUNT });
});

test('a write cut short at the end of the origin marks only the last block', async (t) => {
  const SIZE = 4 * MiB + 4 * KiB;
  const COUNT = Math.ceil(SIZE / BS);
  const m = await mountImage(t, { size: SIZE, options: 'diff_size=64M,block_size=64K' });
  await fsp.mkdir(m.path('snapshots', 'a'));
  const fh = await fsp.open(m.path('origin'), 'r+');
  try {
    const { bytesWritten } = await fh.write(randomBytes(10 * KiB), 0, 10 * KiB, SIZE - 1000);
    t.is(bytesWritten, 1000, 'a write that straddles the end is cut short there');
  } finally {
    await fh.close();
  }
  await fsp.mkdir(m.path('snapshots', 'b'));
  const map = await cbtmap(m, 'b');
  t.true(map.equals(expectedMap(COUNT, [COUNT - 1], 2)), differences(map, expectedMap(COUNT, [COUNT - 1], 2)));
});

test('cbt-dirty marks exactly the blocks asked, in the active map and the newest snapshot; bad requests change nothing', async (t) => {
  const SIZE = 4 * MiB;
  const COUNT = SIZE / BS;
  const m = await mountImage(t, { size: SIZE, options: 'diff_size=64M,block_size=64K' });
  await fsp.mkdir(m.path('snapshots', 's1'));
  t.true((await cbtmap(m, 's1')).equals(Buffer.alloc(COUNT)));

  const asks: Array<[number, number]> = [[0, 1], [BS, BS], [200_000, 100_000], [SIZE - 1, 1]];
  const dirty = new Set<number>();
  for (const [offset, length] of asks) {
    await control(m, `cbt-dirty ${offset} ${length}`);
    for (const b of blocksOf(offset, length)) dirty.add(b);
  }
  t.deepEqual([...dirty].sort((a, b) => a - b), [0, 1, 3, 4, COUNT - 1]);
  // The newest snapshot's map gets its own changes_number at those blocks (blksnap's cbtdirty).
  const s1 = await cbtmap(m, 's1');
  t.true(s1.equals(expectedMap(COUNT, dirty, 1)), differences(s1, expectedMap(COUNT, dirty, 1)));
  // The CLI does the same through /control.
  await cli('cbt', 'dirty', m.mnt, String(6 * BS), '1');
  dirty.add(6);
  t.true((await cbtmap(m, 's1')).equals(expectedMap(COUNT, dirty, 1)));

  const statusBefore = await m.status();
  const bad = [
    'cbt-dirty 0 0', 'cbt-dirty -1 10', `cbt-dirty ${SIZE} 1`, `cbt-dirty ${SIZE - 10} 20`, 'cbt-dirty abc 1',
    'cbt-dirty 1', 'cbt-dirty 1 2 3', 'cbt-dirty 99999999999999999999 1', 'cbt-dirty 0x10 1', 'cbt-dirty 1.5 2',
  ];
  for (const line of bad) {
    const err = await t.throwsAsync(control(m, line), undefined, line);
    t.is((err as NodeJS.ErrnoException | undefined)?.code, 'EINVAL', line);
  }
  const badCli = await run(process.execPath, [CLI, 'cbt', 'dirty', m.mnt, String(SIZE), '1']);
  t.not(badCli.code, 0);
  t.is(badCli.stderr.trim().split('\n').length, 1, 'one clear stderr line');
  t.true((await cbtmap(m, 's1')).equals(expectedMap(COUNT, dirty, 1)), 'no bad request marked anything');
  t.deepEqual((await m.status())['change_tracking'], statusBefore['change_tracking']);

  // The active map carried the same marks: they are "changed since s1" in s2.
  await fsp.mkdir(m.path('snapshots', 's2'));
  const s2 = await cbtmap(m, 's2');
  t.true(s2.equals(expectedMap(COUNT, dirty, 2)), differences(s2, expectedMap(COUNT, dirty, 2)));
  // With two snapshots only the newest is marked.
  await control(m, `cbt-dirty ${10 * BS} ${BS}`);
  t.is((await cbtmap(m, 's2'))[10], 2);
  t.is((await cbtmap(m, 's1'))[10], 0);
  await fsp.mkdir(m.path('snapshots', 's3'));
  const s3 = await cbtmap(m, 's3');
  t.true(s3.equals(expectedMap(COUNT, [10], 3, s2)), differences(s3, expectedMap(COUNT, [10], 3, s2)));
});

test('the change number wraps after 255: map reset, new generation, cbt-reset event, backups fall back to full', async (t) => {
  const SIZE = 4 * MiB;
  const COUNT = SIZE / BS;
  const m = await mountImage(t, { size: SIZE, options: 'diff_size=64M,block_size=64K' });
  const dir = await scratchDir(t);
  const target = join(dir, 'disk.img');
  await writeRange(m.path('origin'), 0, randomBytes(10));
  const gen0 = String((await m.status() as { change_tracking: { generation_id: string } }).change_tracking.generation_id);

  let n = 0;
  let info: Record<string, unknown> = {};
  for (;;) {
    n++;
    if (n > 300) t.fail('the generation never changed');
    if (n === 255) await writeRange(m.path('origin'), 7 * BS, randomBytes(10)); // in period 255
    const name = `w${n}`;
    await fsp.mkdir(m.path('snapshots', name));
    info = await m.info(name);
    if (info['generation_id'] !== gen0) break;
    t.is(info['changes_number'], n, `snapshot ${n} of the first generation`);
    if (n === 1) await must(process.execPath, [CLI, 'backup', m.mnt, name, target, '--json']);
    if (n === 255) {
      const map = await cbtmap(m, name);
      t.is(map[7], 255);
      t.is(map[0], 1);
      await writeRange(m.path('origin'), 9 * BS, randomBytes(10)); // after the reset
    }
    if (n !== 255) await fsp.rmdir(m.path('snapshots', name)); // keep the last of the old generation
  }
  t.is(n, 256, 'the 256th snapshot starts the new generation');
  t.is(info['changes_number'], 1);
  const gen1 = String(info['generation_id']);
  t.not(gen1, gen0);
  // The map was reset: only what was written since (block 9) is marked, with 1.
  const map = await cbtmap(m, 'w256');
  t.true(map.equals(expectedMap(COUNT, [9], 1)), differences(map, expectedMap(COUNT, [9], 1)));
  // The last snapshot of the old generation keeps its map.
  t.like(await m.info('w255'), { generation_id: gen0, changes_number: 255 });
  t.like(await m.status(), { change_tracking: { generation_id: gen1, changes_number: 1, active_number: 2 } });

  const events = await run('timeout', ['2', 'cat', m.path('events')]);
  const resets = events.stdout.split('\n').filter((l) => l.length > 0).map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((e) => e['type'] === 'cbt-reset');
  // The mount started generation 0 ("first"), the wrap started generation 1.
  t.deepEqual(resets.map((e) => [e['reason'], e['generation_id']]), [['first', gen0], ['wrap', gen1]], events.stdout.slice(-2000));
  t.is(typeof resets[1]?.['seq'], 'number');

  // An incremental backup across the reset cannot trust the map: it falls back to full and says so.
  const r = await run(process.execPath, [CLI, 'backup', m.mnt, 'w256', target, '--since-manifest', `${target}.manifest.json`]);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, /generation changed.*full backup/);
  t.regex(r.stdout, /^full backup of w256/);
  await must('cmp', [target, m.path('snapshots', 'w256', 'image')]);
});

test('a 1 TiB sparse origin: a 2 MiB cbtmap, fast snapshots, exact marks and bounded daemon memory', async (t) => {
  const SIZE = 2 ** 40;
  const m = await mountImage(t, { size: SIZE, sparse: true, options: 'diff_size=64M' });
  const status = await m.status() as { pid: number; block_size: number; block_count: number };
  // Default geometry keeps the map at 2^21 blocks (blksnap's rule): 512 KiB blocks here.
  t.is(status.block_size, 512 * KiB);
  t.is(status.block_count, 2 ** 21);
  const bs = status.block_size;
  const rss = async (): Promise<number> => {
    const text = await fsp.readFile(`/proc/${status.pid}/status`, 'utf8');
    const kb = /VmRSS:\s+(\d+) kB/.exec(text)?.[1];
    if (kb === undefined) throw new Error('no VmRSS for the daemon');
    return Number(kb) * 1024;
  };

  const takeTimed = async (name: string): Promise<number> => {
    const t0 = process.hrtime.bigint();
    await fsp.mkdir(m.path('snapshots', name));
    return Number(process.hrtime.bigint() - t0) / 1e6;
  };
  const ms1 = await takeTimed('s1');
  t.true(ms1 < 1000, `taking a snapshot of 1 TiB took ${ms1} ms`);
  t.is((await fsp.stat(m.path('snapshots', 's1', 'cbtmap'))).size, 2 ** 21);
  t.true((await cbtmap(m, 's1')).equals(Buffer.alloc(2 ** 21)));
  t.like(await m.info('s1'), { device_capacity: SIZE, block_count: 2 ** 21, block_size: bs });

  const writes: Array<[number, number]> = [[0, 1], [2 ** 39 - 5, 10], [SIZE - bs - 1, 2], [SIZE - 1, 1]];
  const changed = new Set<number>();
  for (const [offset, length] of writes) {
    await writeRange(m.path('origin'), offset, randomBytes(length));
    for (const b of blocksOf(offset, length, bs)) changed.add(b);
  }
  const ms2 = await takeTimed('s2');
  t.true(ms2 < 1000, `taking the second snapshot took ${ms2} ms`);
  const map2 = await cbtmap(m, 's2');
  t.true(map2.equals(expectedMap(2 ** 21, changed, 2)), differences(map2, expectedMap(2 ** 21, changed, 2)));
  // s1's image still reads the old (zero) bytes where the origin changed, far into the file.
  t.true((await readRange(m.path('snapshots', 's1', 'image'), SIZE - 1, 1)).equals(Buffer.alloc(1)));

  for (let i = 3; i <= 8; i++) await takeTimed(`s${i}`);
  const used = await rss();
  // The bound: Node, fuse-native and pino idle at ~60 MiB here; change tracking costs one
  // byte per 512 KiB block, 2 MiB for the active map plus 2 MiB per snapshot held (8):
  // 18 MiB; the copy-on-write and read buffer pools are capped at 24 MiB; per-chunk state
  // is paged and grows with chunks written, not with the origin. Anything that scaled
  // with the 1 TiB itself (a per-4K bitmap alone would be 32 MiB per map) breaks it.
  const BOUND = 160 * MiB;
  t.true(used < BOUND, `daemon RSS ${Math.round(used / MiB)} MiB (bound ${BOUND / MiB} MiB)`);
  t.log(`daemon RSS with 8 snapshots of 1 TiB: ${Math.round(used / MiB)} MiB; takes ${ms1.toFixed(1)} ms, ${ms2.toFixed(1)} ms`);
});
