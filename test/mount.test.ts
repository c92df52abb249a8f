import test from 'ava';
import { promises as fsp } from 'node:fs';
import { MiB, mountImage, readRange, writeRange } from './helpers/fixture.js';
import { randomBytes } from 'node:crypto';

test('snapshot image keeps the point in time while the origin changes', async (t) => {
  const m = await mountImage(t, { size: 32 * MiB });
  const before = await fsp.readFile(m.origin);
  await fsp.mkdir(m.path('snapshots', 'a'));
  await writeRange(m.path('origin'), 5 * MiB + 123, randomBytes(3 * MiB));
  const image = await readRange(m.path('snapshots', 'a', 'image'), 0, 32 * MiB);
  t.true(image.equals(before));
  const now = await fsp.readFile(m.origin);
  t.false(now.equals(before));
  t.true((await readRange(m.path('origin'), 0, 32 * MiB)).equals(now));
});

test('the daemon does not keep the caller\'s directory: it runs in /', async (t) => {
  const m = await mountImage(t, { size: 8 * MiB });
  const pid = (await m.status())['pid'] as number;
  t.is(await fsp.readlink(`/proc/${pid}/cwd`), '/');
});
