/**
 * /control as the contract has it, on real mounts: lines assembled per open file across
 * write() calls (a command runs whole, when its newline arrives or at close), JSON-quoted
 * paths, 4096-byte lines, EINVAL with nothing done for a bad line; and storage-append
 * is root's alone, whoever owns the mount.
 */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { CLI, KiB, MiB, type Mounted, mountImage, must, run, sh } from './helpers/fixture.js';
import { control } from './helpers/events.js';
import type { DiffStorageStats } from '../src/storage/diff-storage.js';

async function storageFiles(m: Mounted): Promise<Array<[string, number]>> {
  const s = (await m.status())['diff_storage'] as DiffStorageStats;
  return s.files.map((f) => [f.path, f.size]);
}

/** Write `pieces` to one open /control, one write(2) each; the errno of each write (null: it succeeded). */
async function writePieces(m: Mounted, pieces: Array<string | Buffer>): Promise<Array<string | null>> {
  const fh = await fsp.open(m.path('control'), 'w');
  const results: Array<string | null> = [];
  try {
    for (const piece of pieces) {
      const data = typeof piece === 'string' ? Buffer.from(piece) : piece;
      try {
        const { bytesWritten } = await fh.write(data, 0, data.length);
        results.push(bytesWritten === data.length ? null : `short write ${bytesWritten}`);
      } catch (err) {
        results.push((err as NodeJS.ErrnoException).code ?? String(err));
      }
    }
  } finally {
    await fh.close();
  }
  return results;
}

test('defect 4: a command cut across two writes runs once, whole: "storage-append PATH 1" + "6M\\n" appends 16 MiB', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, options: 'diff_size=4M,chunk_size=64K' });
  const extra = join(m.dir, 'extra.diff');
  t.deepEqual(await writePieces(m, [`storage-append ${extra} 1`, '6M\n']), [null, null]);
  t.deepEqual(await storageFiles(m), [[m.diff, 4 * MiB], [extra, 16 * MiB]]);

  // Three pieces, cut inside words, the newline alone at the end.
  const more = join(m.dir, 'more.diff');
  t.deepEqual(await writePieces(m, ['stor', `age-append ${more.slice(0, 5)}`, `${more.slice(5)} 2M`, '\n']), [null, null, null, null]);
  t.deepEqual((await storageFiles(m)).at(-1), [more, 2 * MiB]);
});

test('defect 4: cat of a 200 KB file of cbt-dirty lines runs every line whole, across the 128 KiB request boundary', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, options: 'diff_size=4M,block_size=64K' });
  await fsp.mkdir(m.path('snapshots', 's1'));
  const line = 'cbt-dirty 0 65536\n';
  const count = Math.ceil(200_000 / line.length);
  const file = join(m.dir, 'commands');
  await fsp.writeFile(file, line.repeat(count));
  // cat writes 128 KiB at a time: the cut falls inside a line.
  t.not((128 * KiB) % line.length, 0, 'the test cuts a line');
  const c = await run('bash', ['-c', 'cat "$1" > "$2"', '-', file, m.path('control')]);
  t.is(c.code, 0, c.stderr);
  t.is(c.stderr, '');
  t.is((await fsp.readFile(m.path('snapshots', 's1', 'cbtmap')))[0], 1, 'block 0 marked');
  const log = await fsp.readFile(m.log, 'utf8');
  t.notRegex(log, /request failed/, 'no write to /control failed');
});

test('defect 4: a path with spaces and quotes works as a JSON string', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, options: 'diff_size=4M,chunk_size=64K' });
  const dir = join(m.dir, 'my "disks" here');
  await fsp.mkdir(dir);
  const path = join(dir, 'extra storage.diff');
  t.is(await control(m.mnt, `storage-append ${JSON.stringify(path)} 1M`), null);
  t.deepEqual((await storageFiles(m)).at(-1), [path, MiB]);
  t.true((await fsp.stat(path)).isFile());
  // Written by hand, as a shell script would.
  const other = join(dir, 'second one.diff');
  t.is(await control(m.mnt, `storage-append "${other.replace(/"/g, '\\"')}" 1M`), null);
  t.deepEqual((await storageFiles(m)).at(-1), [other, MiB]);
  // The CLI quotes every path.
  const third = join(dir, 'third one.diff');
  await must(process.execPath, [CLI, 'storage', 'append', m.mnt, third, '1M']);
  t.deepEqual((await storageFiles(m)).at(-1), [third, MiB]);
});

test('defect 4: a bad line fails its write with EINVAL and changes nothing; the lines after it go on working', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, options: 'diff_size=4M,block_size=64K' });
  await fsp.mkdir(m.path('snapshots', 's1'));
  const target = join(m.dir, 'never.diff');
  const listing = async (): Promise<string[]> => (await fsp.readdir(m.dir)).sort();
  const before = { files: await listing(), status: await m.status(), map: await fsp.readFile(m.path('snapshots', 's1', 'cbtmap')) };
  const bad: Array<[string, string | Buffer]> = [
    ['an unterminated quote', `storage-append "${target} 1M`],
    ['text glued to a quoted word', `storage-append "${target}"x 1M`],
    ['a bad JSON escape', `storage-append "${target}\\q" 1M`],
    ['a NUL byte written as \\u0000', `storage-append "${target}\\u0000x" 1M`],
    ['a raw NUL byte', Buffer.from(`storage-append ${target}\0x 1M`)],
    ['a quote inside a bare word', `storage-append ${target}"x 1M`],
    ['invalid UTF-8', Buffer.concat([Buffer.from('storage-append /tmp/'), Buffer.from([0xff, 0xfe]), Buffer.from(' 1M')])],
    ['an unknown command', 'frobnicate 1 2'],
    ['a cbt-dirty with junk after it', 'cbt-dirty 0 65536 junk'],
    ['a line of 5000 bytes', `cbt-dirty 0 65536 ${'x'.repeat(5000)}`],
  ];
  for (const [what, line] of bad) {
    const data = Buffer.concat([typeof line === 'string' ? Buffer.from(line) : line, Buffer.from('\n')]);
    t.deepEqual(await writePieces(m, [data]), ['EINVAL'], what);
  }
  t.deepEqual(await listing(), before.files, 'no file created');
  t.deepEqual((await m.status())['diff_storage'], before.status['diff_storage'], 'storage unchanged');
  t.true((await fsp.readFile(m.path('snapshots', 's1', 'cbtmap'))).equals(before.map), 'nothing marked');

  // An over-long line fails the write that makes it too long; the rest of it, up to its
  // newline, is dropped, and the next line runs.
  t.deepEqual(await writePieces(m, ['x'.repeat(3000), 'x'.repeat(3000), 'more of it\ncbt-dirty 65536 1\n']), [null, 'EINVAL', null]);
  t.is((await fsp.readFile(m.path('snapshots', 's1', 'cbtmap')))[1], 1, 'the line after it ran');
  // A line of exactly 4096 bytes is fine.
  const exact = `cbt-dirty 131072 1${' '.repeat(4096 - 'cbt-dirty 131072 1'.length)}\n`;
  t.deepEqual(await writePieces(m, [exact]), [null]);
  t.is((await fsp.readFile(m.path('snapshots', 's1', 'cbtmap')))[2], 1);
  // A failed line drops the rest of its write; the next write starts afresh.
  const results = await writePieces(m, ['bogus\ncbt-dirty 0 1\ncbt-dirty 0', ' 1\n', 'cbt-dirty 196608 1\n']);
  if (results[1] !== null) t.log((await fsp.readFile(m.log, 'utf8')).split('\n').filter((l) => /request failed|control/.test(l)).slice(-8).join('\n'));
  t.deepEqual(results, ['EINVAL', null, null]);
  const map = await fsp.readFile(m.path('snapshots', 's1', 'cbtmap'));
  t.deepEqual([map[0], map[3]], [0, 1], 'nothing after the bad line in its write ran; the next write did');
});

test('defect 4: a last line without a newline runs at the last close, even when a child process inherited the descriptor', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, options: 'diff_size=4M,block_size=64K' });
  await fsp.mkdir(m.path('snapshots', 's1'));
  const cbtmap = (): Promise<Buffer> => fsp.readFile(m.path('snapshots', 's1', 'cbtmap'));
  const eventually = async (what: string, check: () => Promise<boolean>): Promise<void> => {
    for (let i = 0; i < 50 && !(await check()); i++) await new Promise((r) => setTimeout(r, 100));
    t.true(await check(), what);
  };
  await sh(`printf 'cbt-dirty 65536 1' > '${m.path('control')}'`);
  // The release that runs it comes just after close returns.
  await eventually('the last line ran', async () => (await cbtmap())[1] === 1);

  // Half a line written, then a child process starts (it inherits the descriptor and
  // closes it at exec: a FLUSH), then the rest: the command runs whole, once.
  const fh = await fsp.open(m.path('control'), 'w');
  await fh.write(Buffer.from('cbt-dirty 13'));
  await run('true', []);
  await fh.write(Buffer.from('1072 1'));
  t.is((await cbtmap())[2], 0, 'not run before the last close');
  await fh.close();
  await eventually('run at the last close', async () => (await cbtmap())[2] === 1);
  t.is((await cbtmap())[0], 0, 'no piece of it ran as a command of its own');
});

test('defect 8: with -o uid=1000 (fuse-native cannot tell the caller), storage-append is EPERM, for root and for that user', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, options: 'diff_size=4M,uid=1000,gid=1000,allow_other,transport=fuse-native' });
  await fsp.chmod(m.dir, 0o755);
  const target = join(m.dir, 'evil.diff');
  t.is(await control(m.mnt, `storage-append ${target} 1M`), 'EPERM', 'root through a mount handed to uid 1000');
  const asUser = await run('setpriv', ['--reuid=1000', '--regid=1000', '--clear-groups', 'bash', '-c',
    `echo "storage-append ${target} 1M" > '${m.path('control')}'`]);
  t.not(asUser.code, 0);
  t.regex(asUser.stderr, /Operation not permitted/);
  await t.throwsAsync(fsp.stat(target), { code: 'ENOENT' });
  t.is(((await m.status())['diff_storage'] as DiffStorageStats).files.length, 1);
  // Other commands stay the owner's.
  const dirty = await run('setpriv', ['--reuid=1000', '--regid=1000', '--clear-groups', 'bash', '-c',
    `echo "cbt-dirty 0 1" > '${m.path('control')}'`]);
  t.is(dirty.code, 0, dirty.stderr);
});

test('defect 8 with libfuse 3, which tells the caller: the user a mount is handed to gets EPERM, root may append', async (t) => {
  const m = await mountImage(t, { size: 16 * MiB, options: 'diff_size=4M,uid=1000,gid=1000,allow_other' });
  await fsp.chmod(m.dir, 0o755);
  const target = join(m.dir, 'evil.diff');
  const asUser = await run('setpriv', ['--reuid=1000', '--regid=1000', '--clear-groups', 'bash', '-c',
    `echo "storage-append ${target} 1M" > '${m.path('control')}'`]);
  t.not(asUser.code, 0);
  t.regex(asUser.stderr, /Operation not permitted/);
  await t.throwsAsync(fsp.stat(target), { code: 'ENOENT' });
  const extra = join(m.dir, 'extra.diff');
  t.is(await control(m.mnt, `storage-append ${extra} 1M`), null, 'root, known as root, may');
  t.is(((await m.status())['diff_storage'] as DiffStorageStats).files.length, 2);
});
