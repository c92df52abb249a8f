/**
 * `blksnapfs backup` and `verify-backup` on real mounts: a full backup and incremental
 * ones chained from it are byte-identical to each snapshot image and copy exactly the
 * changed blocks; a new generation falls back to full; kill -9 in the middle leaves the
 * previous backup and manifest verifying; and the two example scripts work.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { promises as fsp, existsSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import {
  CLI, KiB, MiB, ROOT, daemonPids, must, mountImage, run, scratchDir, writeRange, type Mounted,
} from './helpers/fixture.js';

const BS = 64 * KiB;

interface JsonLine {
  type: string;
  [key: string]: unknown;
}

interface Result extends JsonLine {
  kind: 'full' | 'incremental';
  reason: string;
  copied_bytes: number;
  copied_blocks: number;
  written_bytes: number;
  changes_number: number;
  since_changes_number: number | null;
  generation_id: string;
}

interface Manifest {
  kind: string;
  target: string;
  generation_id: string;
  changes_number: number;
  since_changes_number: number | null;
  block_size: number;
  image_size: number;
  checksum: { algorithm: string; segment_size: number; segments: string[] };
  copied: { bytes: number; blocks: number; ranges: number; read_bytes: number; hole_bytes: number };
}

function parseLines(stdout: string): JsonLine[] {
  return stdout.split('\n').filter((l) => l.length > 0).map((l) => JSON.parse(l) as JsonLine);
}

/** Run a backup with --json; its result line and everything it printed. */
async function backup(m: Mounted, name: string, target: string, since?: string): Promise<{ result: Result; lines: JsonLine[]; stderr: string }> {
  const args = [CLI, 'backup', m.mnt, name, target, '--json', ...(since === undefined ? [] : ['--since-manifest', since])];
  const r = await run(process.execPath, args);
  if (r.code !== 0) throw new Error(`backup exited ${r.code}: ${r.stderr.trim()}`);
  const lines = parseLines(r.stdout);
  const last = lines[lines.length - 1];
  if (last?.type !== 'result') throw new Error(`no result line: ${r.stdout.slice(-500)}`);
  return { result: last as Result, lines, stderr: r.stderr };
}

async function manifestOf(target: string): Promise<Manifest> {
  return JSON.parse(await fsp.readFile(`${target}.manifest.json`, 'utf8')) as Manifest;
}

async function verify(target: string): Promise<void> {
  await must(process.execPath, [CLI, 'verify-backup', `${target}.manifest.json`]);
}

/** Bytes of the blocks touched by some writes (the last block may be short). */
function changedBytes(writes: Array<[number, number]>, size: number): { bytes: number; blocks: number } {
  const blocks = new Set<number>();
  for (const [offset, length] of writes) {
    for (let b = Math.floor(offset / BS); b <= Math.floor((offset + length - 1) / BS); b++) blocks.add(b);
  }
  let bytes = 0;
  for (const b of blocks) bytes += Math.min(BS, size - b * BS);
  return { bytes, blocks: blocks.size };
}

async function applyWrites(m: Mounted, writes: Array<[number, number, 'random' | 'zero']>): Promise<void> {
  for (const [offset, length, kind] of writes) {
    await writeRange(m.path('origin'), offset, kind === 'zero' ? Buffer.alloc(length) : randomBytes(length));
  }
}

test('a full backup and two incrementals chained from it: byte-identical, sparse, only changed blocks copied', async (t) => {
  const SIZE = 48 * MiB + 12 * KiB;
  const m = await mountImage(t, { size: SIZE, options: 'diff_size=128M,block_size=64K' });
  const dir = await scratchDir(t);
  const target = join(dir, 'disk.img');
  await applyWrites(m, [[16 * MiB, 8 * MiB, 'zero']]); // a run of zeros: a hole in the backup

  // Generation 1: full.
  await fsp.mkdir(m.path('snapshots', 's1'));
  const full = await backup(m, 's1', target);
  t.like(full.result, { kind: 'full', copied_bytes: SIZE, changes_number: 1, since_changes_number: null });
  t.true(full.result.written_bytes <= SIZE - 8 * MiB, `written ${full.result.written_bytes}`);
  const progress = full.lines.filter((l) => l.type === 'progress');
  t.true(progress.some((l) => l['phase'] === 'copy' && l['percent'] === 100), 'copy progress reaches 100%');
  t.true(progress.some((l) => l['phase'] === 'verify'), 'a verify phase');
  await must('cmp', [target, m.path('snapshots', 's1', 'image')]);
  const st = await fsp.stat(target);
  t.is(st.size, SIZE);
  t.true(st.blocks * 512 <= SIZE - 8 * MiB + BS, `the zero run is a hole (${st.blocks * 512} bytes allocated)`);
  const m1 = await manifestOf(target);
  t.like(m1, { kind: 'full', target: 'disk.img', changes_number: 1, block_size: BS, image_size: SIZE, generation_id: full.result.generation_id });
  t.is(m1.checksum.segments.length, Math.ceil(SIZE / m1.checksum.segment_size));
  t.like(m1.copied, { bytes: SIZE, read_bytes: SIZE, hole_bytes: 0 }); // a dense origin: every byte is data
  await verify(target);
  await fsp.rmdir(m.path('snapshots', 's1')); // change tracking needs no snapshot kept between backups

  // Generation 2: incremental. Includes zeros over data, the last (short) block, a boundary.
  const w2: Array<[number, number, 'random' | 'zero']> = [
    [100, 10, 'random'], [5 * BS - 3, 6, 'random'], [2 * MiB, 3 * MiB + 17, 'random'],
    [30 * MiB, 2 * BS, 'zero'], [SIZE - 5, 5, 'random'],
  ];
  await applyWrites(m, w2);
  await fsp.mkdir(m.path('snapshots', 's2'));
  const inc2 = await backup(m, 's2', target, `${target}.manifest.json`);
  const want2 = changedBytes(w2.map(([o, l]) => [o, l]), SIZE);
  t.like(inc2.result, { kind: 'incremental', changes_number: 2, since_changes_number: 1, copied_bytes: want2.bytes, copied_blocks: want2.blocks });
  t.is(inc2.result.generation_id, full.result.generation_id);
  await must('cmp', [target, m.path('snapshots', 's2', 'image')]);
  const m2 = await manifestOf(target);
  t.like(m2, { kind: 'incremental', changes_number: 2, since_changes_number: 1 });
  t.is(m2.copied.bytes, want2.bytes);
  t.is(m2.copied.read_bytes + m2.copied.hole_bytes, want2.bytes);
  await verify(target);

  // Generation 3: incremental on top; data into the old hole, and rewriting blocks of gen 2.
  const w3: Array<[number, number, 'random' | 'zero']> = [[20 * MiB + 1, 3 * BS, 'random'], [100, 1, 'random'], [47 * MiB, 1, 'random']];
  await applyWrites(m, w3);
  await fsp.mkdir(m.path('snapshots', 's3'));
  const inc3 = await backup(m, 's3', target, `${target}.manifest.json`);
  const want3 = changedBytes(w3.map(([o, l]) => [o, l]), SIZE);
  t.like(inc3.result, { kind: 'incremental', changes_number: 3, since_changes_number: 2, copied_bytes: want3.bytes, copied_blocks: want3.blocks });
  await must('cmp', [target, m.path('snapshots', 's3', 'image')]);
  await verify(target);
  // s2 is still held and unchanged; the backup is s3's now.
  const c = await run('cmp', ['-s', target, m.path('snapshots', 's2', 'image')]);
  t.is(c.code, 1);
  t.deepEqual((await fsp.readdir(dir)).sort(), ['disk.img', 'disk.img.manifest.json'], 'no TARGET.lock left behind');

  // A damaged backup fails verification, naming where.
  await writeRange(target, 40 * MiB + 3, Buffer.from('x'));
  const bad = await run(process.execPath, [CLI, 'verify-backup', `${target}.manifest.json`]);
  t.not(bad.code, 0);
  t.regex(bad.stderr, new RegExp(`offset ${40 * MiB}\\b`));
});

test('an incremental backup from another generation (the origin written outside the mount) falls back to full and says so', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB });
  const dir = await scratchDir(t);
  const target = join(dir, 'disk.img');
  await fsp.mkdir(m.path('snapshots', 'a'));
  const first = await backup(m, 'a', target);
  await fsp.rmdir(m.path('snapshots', 'a'));
  await must('fusermount', ['-u', m.mnt]);
  for (let i = 0; i < 100 && (await daemonPids(m.mnt)).length > 0; i++) await new Promise((r) => setTimeout(r, 100));

  // Written while not mounted: the next mount cannot prove the tracking continuous (a new generation).
  await writeRange(m.origin, 2 * MiB, randomBytes(10));
  const m2 = await mountImage(t, { origin: m.origin });
  await applyWrites(m2, [[MiB, 10, 'random']]);
  await fsp.mkdir(m2.path('snapshots', 'b'));
  const again = await backup(m2, 'b', target, `${target}.manifest.json`);
  t.not(again.result.generation_id, first.result.generation_id);
  t.like(again.result, { kind: 'full', copied_bytes: 16 * MiB });
  t.regex(again.result.reason, /generation changed/);
  t.true(again.lines.some((l) => l.type === 'note' && /full backup/.test(String(l['message']))), 'the fallback is said');
  await must('cmp', [target, m2.path('snapshots', 'b', 'image')]);
  await verify(target);
});

test('kill -9 in the middle of a backup leaves the previous backup and manifest verifying', async (t) => {
  const SIZE = 128 * MiB;
  const m = await mountImage(t, { size: SIZE, options: 'diff_size=192M' });
  const dir = await scratchDir(t);
  const target = join(dir, 'disk.img');
  await fsp.mkdir(m.path('snapshots', 's1'));
  await backup(m, 's1', target);
  const manifestBefore = await fsp.readFile(`${target}.manifest.json`);
  await applyWrites(m, [[8 * MiB, 96 * MiB, 'random']]);
  await fsp.mkdir(m.path('snapshots', 's2'));

  /** Start a backup and kill -9 it once it reports copy progress short of the end. */
  const killMidway = async (since: boolean): Promise<void> => {
    const args = [CLI, 'backup', m.mnt, 's2', target, '--json', ...(since ? ['--since-manifest', `${target}.manifest.json`] : [])];
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    t.teardown(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    const killedAt = await new Promise<JsonLine | null>((resolvePromise) => {
      let buffered = '';
      child.stdout.on('data', (d: Buffer) => {
        buffered += d.toString();
        for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
          const line = JSON.parse(buffered.slice(0, nl)) as JsonLine;
          buffered = buffered.slice(nl + 1);
          const done = Number(line['done_bytes']);
          if (line.type === 'progress' && line['phase'] === 'copy' && done > 0 && done < Number(line['total_bytes'])) {
            child.kill('SIGKILL');
            resolvePromise(line);
          }
        }
      });
      child.on('exit', () => resolvePromise(null));
    });
    t.not(killedAt, null, 'killed while copying');
    await new Promise<void>((r) => (child.exitCode !== null || child.signalCode !== null ? r() : child.on('exit', () => r())));
    t.is(child.signalCode, 'SIGKILL');
    t.true(existsSync(`${target}.partial`), 'it died midway, with its partial image');
    t.true((await fsp.readFile(`${target}.manifest.json`)).equals(manifestBefore), 'the manifest is the previous one');
    await must('cmp', [target, m.path('snapshots', 's1', 'image')]);
    await verify(target);
  };
  await killMidway(true); // an incremental, building on the previous image
  await killMidway(false); // a full one, replacing it

  // Ctrl-C (SIGINT) stops at the next piece and removes the partial files itself.
  const child = spawn(process.execPath, [CLI, 'backup', m.mnt, 's2', target, '--json', '--since-manifest', `${target}.manifest.json`], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdout.on('data', (d: Buffer) => {
    if (/"phase":"copy","done_bytes":[1-9]/.test(d.toString())) child.kill('SIGINT');
  });
  const code = await new Promise<number | null>((r) => child.on('close', (c) => r(c)));
  t.not(code, 0);
  t.regex(stderr, /interrupted/);
  t.false(existsSync(`${target}.partial`), 'an interrupted run cleans up after itself');
  t.false(existsSync(`${target}.manifest.json.partial`));
  t.true((await fsp.readFile(`${target}.manifest.json`)).equals(manifestBefore));

  // The next run cleans up and succeeds.
  const r = await backup(m, 's2', target, `${target}.manifest.json`);
  t.is(r.result.kind, 'incremental');
  t.is(r.result.copied_bytes, 96 * MiB);
  await must('cmp', [target, m.path('snapshots', 's2', 'image')]);
  await verify(target);
  t.false(existsSync(`${target}.partial`));
});

test('a kill between the image rename and the manifest rename is finished by the next run; debris is removed', async (t) => {
  const m = await mountImage(t, { size: 8 * MiB });
  const dir = await scratchDir(t);
  const target = join(dir, 'disk.img');
  const other = join(dir, 'other.img');
  await fsp.mkdir(m.path('snapshots', 's1'));
  await backup(m, 's1', target);
  const before = await manifestOf(target);
  await applyWrites(m, [[MiB, 10, 'random']]);
  await fsp.mkdir(m.path('snapshots', 's2'));
  await backup(m, 's2', other);

  // What a run killed right after its commit point leaves: the new image in place, its
  // manifest still pending (naming the image's inode).
  const pending = JSON.parse(await fsp.readFile(`${other}.manifest.json`, 'utf8')) as Record<string, unknown>;
  pending['target'] = 'disk.img';
  await fsp.writeFile(`${target}.manifest.json.partial`, JSON.stringify(pending));
  await fsp.rename(other, target);
  const v = await run(process.execPath, [CLI, 'verify-backup', `${target}.manifest.json`]);
  t.is(v.code, 0, v.stderr);
  t.regex(v.stderr, /finished committing/);
  t.like(await manifestOf(target), { changes_number: 2 });
  t.false(existsSync(`${target}.manifest.json.partial`));
  await must('cmp', [target, m.path('snapshots', 's2', 'image')]);

  // A pending manifest whose image never made it into place is debris: discarded.
  const stale = { ...pending, target_file: { ...(pending['target_file'] as object), ino: 1 } };
  await fsp.writeFile(`${target}.manifest.json.partial`, JSON.stringify(stale));
  const v2 = await run(process.execPath, [CLI, 'verify-backup', `${target}.manifest.json`]);
  t.is(v2.code, 0, v2.stderr);
  t.regex(v2.stderr, /removed .*partial/);
  t.false(existsSync(`${target}.manifest.json.partial`));
  t.notDeepEqual(before.checksum.segments, (await manifestOf(target)).checksum.segments);
});

test('backup refuses clearly: unknown snapshot, missing or bad manifest, a snapshot older than the manifest', async (t) => {
  const m = await mountImage(t, { size: 8 * MiB });
  const dir = await scratchDir(t);
  const target = join(dir, 'disk.img');
  const fails = async (args: string[], pattern: RegExp): Promise<void> => {
    const r = await run(process.execPath, [CLI, ...args]);
    t.not(r.code, 0, args.join(' '));
    t.is(r.stderr.trim().split('\n').length, 1, `one stderr line: ${r.stderr}`);
    t.regex(r.stderr, pattern);
  };
  await fails(['backup', m.mnt, 'nope', target], /no snapshot "nope"/);
  await fsp.mkdir(m.path('snapshots', 'a'));
  await fails(['backup', m.mnt, 'a', target, '--since-manifest', join(dir, 'missing.json')], /does not exist/);
  await fsp.writeFile(join(dir, 'bad.json'), '{"format": "something else"}');
  await fails(['backup', m.mnt, 'a', target, '--since-manifest', join(dir, 'bad.json')], /not a blksnapfs backup manifest/);
  await fails(['backup', m.mnt, 'a', join(dir, 'no-such-dir', 'disk.img')], /does not exist/);
  await fsp.mkdir(m.path('snapshots', 'b'));
  await backup(m, 'b', target);
  await fails(['backup', m.mnt, 'a', target, '--since-manifest', `${target}.manifest.json`], /older than the backup/);
  await fails(['verify-backup', join(dir, 'missing.json')], /does not exist/);
  t.deepEqual((await fsp.readdir(dir)).sort(), ['bad.json', 'disk.img', 'disk.img.manifest.json']);
});

test('on a terminal the backup draws a progress bar; elsewhere it prints plain lines', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB });
  const dir = await scratchDir(t);
  await fsp.mkdir(m.path('snapshots', 'a'));
  const plain = await run(process.execPath, [CLI, 'backup', m.mnt, 'a', join(dir, 'plain.img')]);
  t.is(plain.code, 0, plain.stderr);
  t.regex(plain.stderr, /^blksnapfs backup: copy 100% \(16\.0M of 16\.0M\)$/m);
  t.false(plain.stderr.includes('\r'));
  t.regex(plain.stdout, /^full backup of a to .*plain\.img: 16\.0M copied/);
  // script(1) gives the command a pseudo-terminal.
  const cmd = `${process.execPath} ${CLI} backup ${m.mnt} a ${join(dir, 'tty.img')}`;
  const tty = await run('script', ['-qec', cmd, '/dev/null']);
  t.is(tty.code, 0, tty.stdout);
  t.regex(tty.stdout, /\r\x1b\[Kblksnapfs backup copy \[#+\] 100%/);
  await must('cmp', [join(dir, 'tty.img'), m.path('snapshots', 'a', 'image')]);
});

test('the example scripts: incremental loops with dd + cbtmap and with blksnapfs backup', async (t) => {
  const SIZE = 24 * MiB;
  const m = await mountImage(t, { size: SIZE });
  const dir = await scratchDir(t);
  const env = { ...process.env, BLKSNAPFS: CLI };
  const script = async (name: string, out: string): Promise<string> => {
    const r = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolvePromise) => {
      const child = spawn('bash', [join(ROOT, 'examples', name), m.mnt, out], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('close', (code) => resolvePromise({ code, stdout, stderr }));
    });
    if (r.code !== 0) throw new Error(`${name} exited ${r.code ?? 'by a signal'}: ${r.stderr.trim()}`);
    return r.stdout;
  };
  const ddDir = join(dir, 'dd');
  const bkDir = join(dir, 'bk');
  t.regex(await script('incremental-dd.sh', ddDir), /full backup/);
  t.regex(await script('incremental-backup.sh', bkDir), /^full backup/m);
  for (const out of [ddDir, bkDir]) await must('cmp', [join(out, 'disk.img'), m.path('origin')]);

  for (let round = 0; round < 2; round++) {
    await applyWrites(m, [[round * 3 * MiB + 777, 2 * BS, 'random'], [SIZE - 1, 1, 'random']]);
    t.regex(await script('incremental-dd.sh', ddDir), /incremental since changes_number \d+: 2 range\(s\), 262144 bytes/);
    t.regex(await script('incremental-backup.sh', bkDir), /^incremental backup .*4 changed block\(s\)/m);
    for (const out of [ddDir, bkDir]) await must('cmp', [join(out, 'disk.img'), m.path('origin')]);
  }
  t.deepEqual(await fsp.readdir(m.path('snapshots')), [], 'the scripts leave no snapshot behind');
});
