/**
 * kill -9 of the daemon in the middle of writes: every write the caller saw succeed is
 * in the origin file, the mount point is cleaned up (auto_unmount), and the origin can
 * be mounted again at once.
 */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { MOUNT_HELPER, MiB, background, isMounted, mountImage, readRange, run } from './helpers/fixture.js';
import { RECORD, isRecord } from './helpers/seq-writer.js';

test('kill -9 during writes: acknowledged writes are in the origin; mount again', async (t) => {
  const m = await mountImage(t, { size: 32 * MiB, sparse: true, options: 'diff_size=64M,chunk_size=64K' });
  await fsp.mkdir(m.path('snapshots', 'held')); // copy-on-write is active during the crash
  const pid = (await m.status())['pid'] as number;
  const script = fileURLToPath(new URL('./helpers/seq-writer.js', import.meta.url));
  const writer = background(t, process.execPath, [script, m.path('origin'), '8000', '--ack']);
  let acked = -1;
  writer.stdout?.on('data', (d: Buffer) => {
    const lines = d.toString().trim().split('\n');
    acked = Math.max(acked, Number(lines[lines.length - 1]));
  });
  while (acked < 300) await new Promise((r) => setTimeout(r, 10));
  process.kill(pid, 'SIGKILL');
  await new Promise<void>((resolve) => (writer.exitCode !== null ? resolve() : writer.on('exit', () => resolve())));
  const lastAck = acked;
  t.true(lastAck >= 300);
  const data = await readRange(m.origin, 0, (lastAck + 1) * RECORD);
  for (let k = 0; k <= lastAck; k++) {
    if (!isRecord(data.subarray(k * RECORD, (k + 1) * RECORD), k)) {
      t.fail(`acknowledged record ${k} (of ${lastAck}) is not in the origin`);
      return;
    }
  }
  for (let i = 0; i < 50 && (await isMounted(m.mnt)); i++) await new Promise((r) => setTimeout(r, 100));
  t.false(await isMounted(m.mnt), 'auto_unmount cleaned the mount point up');
  const again = await run(process.execPath, [MOUNT_HELPER, m.origin, m.mnt, '-o', `diff_storage=${m.diff},log=${m.log}`]);
  t.is(again.code, 0, again.stderr);
  const status = await m.status();
  t.is((status['snapshots'] as unknown[]).length, 0, 'snapshots do not survive the daemon');
  t.true((await readRange(m.path('origin'), 0, RECORD)).equals(data.subarray(0, RECORD)));
});
