/**
 * The native fast path (issue 14): origin requests that need nothing from the engine are
 * served in C. The same workload on fast_path=on and off must leave the same bytes and
 * maps; snapshots taken while fast writers run hold a prefix of each writer's records;
 * a change map marks exactly what was written; a freeze holds fast writes.
 */
import test, { type ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { KiB, MiB, background, mountImage, must, readRange, run, scratchDir, type Mounted } from './helpers/fixture.js';
import { recordPrefix, RECORD } from './helpers/region-writer.js';
import { seededU32 } from './helpers/seeded-random.js';

const WRITER = fileURLToPath(new URL('./helpers/region-writer.js', import.meta.url));

interface FastPathStatus {
  enabled: boolean;
  reads: number;
  writes: number;
}

async function fastPath(m: Mounted): Promise<FastPathStatus> {
  const transport = (await m.status())['transport'] as { fast_path: FastPathStatus };
  return transport.fast_path;
}

/** `count` seeded 4 KiB writes by each of `writers` processes, each in its own region of `region` bytes. */
async function randomWriters(m: Mounted, writers: number, region: number, count: number, seed: number): Promise<number> {
  const done = await Promise.all(Array.from({ length: writers }, (_, i) =>
    must(process.execPath, [WRITER, m.path('origin'), String(i * region), String(region), 'random', String(4 * KiB), String(count), String(seed * 1000 + i)])));
  return done.reduce((n, out) => n + Number(out.trim()), 0);
}

async function control(m: Mounted, line: string): Promise<void> {
  await fsp.writeFile(m.path('control'), `${line}\n`);
}

function sha(buf: Uint8Array): string {
  return createHash('sha256').update(buf).digest('hex');
}

async function imageHash(m: Mounted, name: string, size: number): Promise<string> {
  return sha(await readRange(m.path('snapshots', name, 'image'), 0, size));
}

const SIZE = 64 * MiB;
const WRITERS = 16;
const REGION = SIZE / WRITERS;

interface Outcome {
  origin: string;
  images: Record<string, string>;
  cbtmaps: Record<string, string>;
  changes: Record<string, number>;
  writes: number;
}

/**
 * A seeded workload, deterministic where it must be: writers each in their own region,
 * takes and rmdirs between phases; image reads, image writes, cbt-dirty and a freeze in
 * between; fio reads at qd16 alongside.
 */
async function workload(t: ExecutionContext, m: Mounted, seed: number): Promise<Outcome> {
  let writes = 0;
  writes += await randomWriters(m, WRITERS, REGION, 150, seed + 1);
  await fsp.mkdir(m.path('snapshots', 's1'));

  // Phase 2: writers, image reads, seeded image writes and origin reads at qd16, all at once.
  const next = seededU32(seed);
  const imageWrites = async (): Promise<void> => {
    const fh = await fsp.open(m.path('snapshots', 's1', 'image'), 'r+');
    try {
      for (let i = 0; i < 12; i++) {
        const length = (1 + (next() % 16)) * 4 * KiB;
        const position = (next() % (SIZE / (4 * KiB) - 16)) * 4 * KiB;
        const data = Buffer.alloc(length);
        for (let j = 0; j < length; j += 4) data.writeUInt32LE(next(), j);
        await fh.write(data, 0, length, position);
      }
    } finally {
      await fh.close();
    }
  };
  const counts = await Promise.all([
    randomWriters(m, WRITERS, REGION, 150, seed + 2),
    imageWrites().then(() => 0),
    readRange(m.path('snapshots', 's1', 'image'), 0, SIZE).then(() => 0),
    must('fio', ['--name=r', `--filename=${m.path('origin')}`, '--rw=randread', '--bs=4k', '--iodepth=16', '--ioengine=libaio',
      '--direct=1', `--size=${SIZE}`, '--number_ios=4000', '--output=/dev/null']).then(() => 0),
  ]);
  writes += counts.reduce((a, b) => a + b, 0);
  await control(m, `cbt-dirty ${5 * MiB + 123} ${200 * KiB}`);
  await fsp.mkdir(m.path('snapshots', 's2'));

  // Phase 3 under a freeze: the writers wait at the gate until the thaw.
  await control(m, 'freeze 20000');
  const held = randomWriters(m, WRITERS, REGION, 100, seed + 3);
  await new Promise((r) => setTimeout(r, 200));
  await control(m, 'thaw');
  writes += await held;

  const s1 = await imageHash(m, 's1', SIZE);
  const s1Changes = (await m.info('s1'))['changes_number'] as number;
  await fsp.rmdir(m.path('snapshots', 's1'));
  await fsp.mkdir(m.path('snapshots', 's3'));
  writes += await randomWriters(m, WRITERS, REGION, 150, seed + 4);

  const outcome: Outcome = { origin: '', images: { s1 }, cbtmaps: {}, changes: { s1: s1Changes }, writes };
  for (const name of ['s2', 's3']) {
    outcome.images[name] = await imageHash(m, name, SIZE);
    outcome.cbtmaps[name] = sha(await fsp.readFile(m.path('snapshots', name, 'cbtmap')));
    outcome.changes[name] = (await m.info(name))['changes_number'] as number;
  }
  outcome.origin = sha(await readRange(m.path('origin'), 0, SIZE));
  t.is((await m.info('s2'))['state'], 'ok');
  return outcome;
}

test('the same seeded workload with fast_path=on and off leaves identical origins, images, change maps and numbers', async (t) => {
  const seed = Number(process.env['BLKSNAPFS_TEST_SEED'] ?? 20261202);
  t.log(`seed ${seed} (BLKSNAPFS_TEST_SEED)`);
  const outcomes: Outcome[] = [];
  for (const setting of ['on', 'off']) {
    const m = await mountImage(t, { size: SIZE, sparse: true, options: `diff_size=256M,chunk_size=64K,block_size=64K,fast_path=${setting}` });
    const outcome = await workload(t, m, seed);
    const fp = await fastPath(m);
    if (setting === 'on') {
      t.true(fp.enabled, 'the fast path is on by default with fast_path=on');
      t.true(fp.writes > outcome.writes / 2, `the fast path served most origin writes (${fp.writes} of ${outcome.writes})`);
      t.true(fp.reads >= 4000, `and the origin reads (${fp.reads})`);
    } else {
      t.deepEqual([fp.enabled, fp.reads, fp.writes], [false, 0, 0], 'fast_path=off serves nothing natively');
    }
    outcomes.push(outcome);
  }
  const [on, off] = outcomes;
  t.deepEqual({ ...on, writes: 0 }, { ...off, writes: 0 }, 'fast_path=on and off give the same bytes and maps');
});

for (const setting of ['on', 'off'] as const) {
  test(`fast_path=${setting}: 16 writers, snapshots 0.3 s apart: every image holds a prefix of each writer's records`, async (t) => {
    // Room for more records than the writers get to: they stop when told, after the
    // snapshots, so every snapshot falls while all of them write, however fast they are.
    const region = 16 * MiB;
    const m = await mountImage(t, { size: WRITERS * region, sparse: true, options: `diff_size=256M,chunk_size=64K,fast_path=${setting}` });
    const stop = join(m.dir, 'stop');
    const writers = Array.from({ length: WRITERS }, (_, i) =>
      background(t, process.execPath, [WRITER, m.path('origin'), String(i * region), String(region), 'records', stop]));
    const counts = writers.map((w) => {
      let out = '';
      w.stdout?.on('data', (d: Buffer) => (out += d.toString()));
      // 'close', not 'exit': only then has all of its output been read.
      return new Promise<number>((resolve) => w.on('close', (code) => resolve(code === 0 ? Number(out.trim()) : -1)));
    });
    const names: string[] = [];
    for (let i = 0; i < 6; i++) {
      await new Promise((r) => setTimeout(r, 300));
      const name = `p${i}`;
      await fsp.mkdir(m.path('snapshots', name));
      names.push(name);
    }
    await fsp.writeFile(stop, '');
    const written = await Promise.all(counts);
    t.false(written.includes(-1), 'every writer finished');
    await fsp.mkdir(m.path('snapshots', 'end'));
    names.push('end');
    const records = region / RECORD;
    let previous: number[] | null = null;
    let during = 0;
    for (const name of names) {
      const image = await readRange(m.path('snapshots', name, 'image'), 0, WRITERS * region);
      const prefixes = Array.from({ length: WRITERS }, (_, i) => recordPrefix(image, i * region, records));
      t.false(prefixes.includes(-1), `${name}: each region is a prefix of its records (${prefixes.join(' ')})`);
      if (previous !== null) {
        const before = previous;
        t.true(prefixes.every((k, i) => k >= (before[i] ?? 0)), `${name}: no region goes back in time`);
      }
      if (prefixes.some((k, i) => k > 0 && k < (written[i] ?? 0))) during++;
      previous = prefixes;
    }
    t.true(during >= 3, `${during} snapshots caught writers in the middle of their records`);
    t.deepEqual(previous, written, 'the last image holds every record written');
    if (setting === 'on') t.true((await fastPath(m)).writes > 0, 'fast writes were part of it');
  });

  test(`fast_path=${setting}: after random 4 KiB writes at qd16 between two takes, the cbtmap marks exactly the blocks written`, async (t) => {
    const m = await mountImage(t, { size: 32 * MiB, sparse: true, options: `diff_size=128M,chunk_size=64K,block_size=4K,fast_path=${setting}` });
    await fsp.mkdir(m.path('snapshots', 'a'));
    // Some writes before the second take touch chunks that are saved already (fast), some not.
    const log = join(m.dir, 'fio.log');
    await must('fio', ['--name=w', `--filename=${m.path('origin')}`, '--rw=randwrite', '--bs=4k', '--iodepth=16', '--ioengine=libaio',
      '--direct=1', '--size=32M', '--number_ios=3000', `--write_iolog=${log}`, '--randrepeat=0', '--output=/dev/null']);
    await fsp.mkdir(m.path('snapshots', 'b'));
    const a = (await m.info('a'))['changes_number'] as number;
    const written = new Set<number>();
    // fio's iolog (version 3): "TIME FILE write OFFSET LENGTH".
    for (const line of (await fsp.readFile(log, 'utf8')).split('\n')) {
      const [, , action, offset, length] = line.split(' ');
      if (action !== 'write') continue;
      for (let b = Math.floor(Number(offset) / 4096); b <= Math.floor((Number(offset) + Number(length) - 1) / 4096); b++) written.add(b);
    }
    const map = await fsp.readFile(m.path('snapshots', 'b', 'cbtmap'));
    const marked = new Set<number>();
    map.forEach((v, i) => {
      if (v > a) marked.add(i);
    });
    t.true(written.size > 1000, `fio wrote ${written.size} blocks`);
    t.deepEqual([...marked].sort((x, y) => x - y), [...written].sort((x, y) => x - y), 'marked exactly the blocks written');
  });

  test(`fast_path=${setting}: while frozen no origin write completes; after thaw they do; a take during a qd16 storm is exact`, async (t) => {
    const m = await mountImage(t, { size: 32 * MiB, sparse: true, options: `diff_size=128M,chunk_size=64K,fast_path=${setting}` });
    // No snapshot: every chunk needs no copy, so these would all be fast writes.
    await control(m, 'freeze 20000');
    const block = Buffer.alloc(4096, 0x5a);
    const writing = run('dd', [`of=${m.path('origin')}`, 'bs=4096', 'count=8', 'oflag=direct', 'conv=notrunc', 'status=none'], { input: block.toString('latin1').repeat(8) });
    await new Promise((r) => setTimeout(r, 300));
    t.true((await readRange(m.origin, 0, 4096)).every((b) => b === 0), 'nothing reached the origin while frozen');
    await fsp.mkdir(m.path('snapshots', 'while-frozen')); // a take works while frozen
    await control(m, 'thaw');
    t.is((await writing).code, 0);
    t.true((await readRange(m.origin, 0, 8 * 4096)).equals(Buffer.from(block.toString('latin1').repeat(8), 'latin1')), 'after thaw the writes landed');
    t.true((await readRange(m.path('snapshots', 'while-frozen', 'image'), 0, 4096)).every((b) => b === 0), 'and the image taken while frozen has none of them');

    // A take in a storm: blocks that differ between consecutive snapshots are exactly
    // blocks the later map marks (a write either wholly in or wholly out of each).
    const storm = background(t, 'fio', ['--name=s', `--filename=${m.path('origin')}`, '--rw=randwrite', '--bs=4k', '--iodepth=16',
      '--ioengine=libaio', '--direct=1', '--size=32M', '--time_based', '--runtime=2', '--output=/dev/null']);
    const names: string[] = [];
    for (let i = 0; i < 4; i++) {
      await new Promise((r) => setTimeout(r, 300));
      const name = `storm${i}`;
      await fsp.mkdir(m.path('snapshots', name));
      names.push(name);
    }
    await new Promise<void>((resolve) => (storm.exitCode !== null ? resolve() : storm.on('exit', () => resolve())));
    for (let i = 1; i < names.length; i++) {
      const older = names[i - 1] ?? '';
      const newer = names[i] ?? '';
      const [x, y] = await Promise.all([readRange(m.path('snapshots', older, 'image'), 0, 32 * MiB), readRange(m.path('snapshots', newer, 'image'), 0, 32 * MiB)]);
      const map = await fsp.readFile(m.path('snapshots', newer, 'cbtmap'));
      const since = (await m.info(older))['changes_number'] as number;
      const bs = 32 * MiB / map.length;
      let unmarkedChange = -1;
      for (let b = 0; b < map.length && unmarkedChange < 0; b++) {
        if ((map[b] ?? 0) <= since && !x.subarray(b * bs, (b + 1) * bs).equals(y.subarray(b * bs, (b + 1) * bs))) unmarkedChange = b;
      }
      t.is(unmarkedChange, -1, `${older} -> ${newer}: every changed block is marked`);
    }
  });
}

test('a 16 TiB origin with chunk_size=64K mounts: 256M chunks of shared state, snapshots and writes work', async (t) => {
  const dir = await scratchDir(t);
  // ext4 cannot hold a 16 TiB file; tmpfs holds it sparse (the difference storage stays on ext4).
  const origin = join('/dev/shm', `blksnapfs-16t-${process.pid}.img`);
  t.teardown(() => fsp.rm(origin, { force: true }));
  t.teardown(() => fsp.rm(`${origin}.cbt`, { force: true }));
  await must('truncate', ['-s', '16T', origin]);
  const m = await mountImage(t, { origin, options: `diff_storage=${join(dir, 'd.diff')},diff_size=64M,chunk_size=64K` });
  const status = await m.status();
  t.deepEqual([status['chunk_size'], status['chunk_count']], [64 * KiB, 256 * 1024 * 1024]);
  await fsp.mkdir(m.path('snapshots', 'x'));
  const far = 16 * 1024 ** 4 - 64 * KiB;
  const data = Buffer.alloc(64 * KiB, 7);
  const fh = await fsp.open(m.path('origin'), 'r+');
  try {
    await fh.write(data, 0, data.length, far);
    await fh.write(data, 0, data.length, far); // the second write of the chunk: fast
  } finally {
    await fh.close();
  }
  t.true((await readRange(m.path('snapshots', 'x', 'image'), far, 64 * KiB)).every((b) => b === 0), 'the image keeps the old (zero) chunk');
  t.true((await readRange(m.path('origin'), far, 64 * KiB)).equals(data));
  const pid = Number((await m.status())['pid']);
  const rss = Number(/VmRSS:\s+(\d+)/.exec(await fsp.readFile(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) * KiB;
  t.log(`daemon RSS ${Math.round(rss / MiB)} MiB`);
  t.true(rss < 512 * MiB, `the daemon's memory stays flat: ${Math.round(rss / MiB)} MiB`);
});
