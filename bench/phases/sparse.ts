/**
 * Thin images (issue 16):
 * - `cp --sparse=always` of a snapshot image of a sparse origin (1 MiB of data in every
 *   20 MiB: 5%): its speed in MiB of image per second against cp of the origin file
 *   itself and of qsd's export of the same snapshot, and the bytes each daemon read
 *   meanwhile (/proc/PID/io rchar: the origin, the difference storage, its requests),
 *   which should follow the data, not the size;
 * - first writes under a snapshot into a region that is a hole on the origin, against
 *   the same into data (4 KiB writes, one per chunk, qd16: every write a first touch).
 *   A chunk that is wholly a hole is saved as a hole by blksnapfs (no read, no copy).
 */
import { promises as fsp } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { Ctx } from '../lib/context.js';
import { bsfSystems, mountBsf, startQsd } from '../lib/context.js';
import type { Blksnapfs } from '../lib/blksnapfs.js';
import { must } from '../lib/proc.js';
import type { System } from '../lib/results.js';
import { fio, MiB, writeFirstTouchLog } from '../lib/tools.js';
import { measure, session } from './common.js';

/** 1 MiB of data at the start of every STRIDE: 5% of the origin. */
const EXTENT = MiB;
const STRIDE = 20 * MiB;

/** A sparse origin of `size` with an extent of random data at the start of every STRIDE. */
async function makeSparseOrigin(path: string, size: number): Promise<number> {
  await must('truncate', ['-s', String(size), path]);
  const fh = await fsp.open(path, 'r+');
  let data = 0;
  try {
    for (let at = 0; at < size; at += STRIDE) {
      const n = Math.min(EXTENT, size - at);
      await fh.write(randomBytes(n), 0, n, at);
      data += n;
    }
    await fh.datasync();
  } finally {
    await fh.close();
  }
  return data;
}

/** Bytes a process has read with read(2)-like calls so far (rchar). */
async function readBytes(pid: number): Promise<number> {
  const io = await fsp.readFile(`/proc/${pid}/io`, 'utf8');
  const m = /^rchar: (\d+)$/m.exec(io);
  if (m === null) throw new Error(`no rchar in /proc/${pid}/io`);
  return Number(m[1]);
}

export async function sparseImages(ctx: Ctx): Promise<void> {
  const { reps, sparseSize, firstTouchRegion, chunk } = ctx.cfg;
  const label = `${sparseSize / MiB} MiB origin, 5% data`;
  const cpId = 'sparse.cp';
  const readId = 'sparse.cp.read';
  const hole = 'sparse.first.hole';
  const data = 'sparse.first.data';
  ctx.rec.row(cpId, { section: 'Thin images', workload: `cp --sparse=always of the image, ${label}`, tool: 'cp --sparse=always', state: 'snapshot held (raw: the origin file)', unit: 'MiB/s' });
  ctx.rec.row(readId, { section: 'Thin images', workload: `bytes the daemon read for that cp, ${label}`, tool: '/proc/PID/io rchar', state: 'snapshot held', unit: 'MiB' });
  const ftSpec = { section: 'Thin images', workload: '4K first writes qd16', tool: `fio iolog, ${firstTouchRegion / chunk} writes`, unit: 'IOPS' as const };
  ctx.rec.row(hole, { ...ftSpec, state: 'snapshot held, first touch, into a hole' });
  ctx.rec.row(data, { ...ftSpec, state: 'snapshot held, first touch, into data' });

  const origin = join(ctx.dir, 'sparse-origin.img');
  const dataBytes = await makeSparseOrigin(origin, sparseSize);
  ctx.rec.fact(cpId, 'data_mib', dataBytes / MiB);
  ctx.rec.fact(readId, 'data_mib', dataBytes / MiB);
  // First writes into holes: an origin that is all hole (the data case uses the bench origin).
  const holes = join(ctx.dir, 'hole-origin.img');
  await must('truncate', ['-s', String(ctx.cfg.size), holes]);
  const copy = join(ctx.dir, 'sparse-copy.img');
  const iolog = join(ctx.dir, 'sparse-first-touch.iolog');
  const owes = [cpId, readId, hole, data];

  /** cp --sparse=always of `path`; MiB of image per second. `pid`: the daemon whose reads are counted. */
  const cp = async (system: System, path: string, pid: number | null, daemon?: Blksnapfs): Promise<void> => {
    let read = 0;
    await measure(ctx, cpId, system, async () => {
      const before = pid === null ? 0 : await readBytes(pid);
      const started = process.hrtime.bigint();
      await must('cp', ['--sparse=always', path, copy]);
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      if (pid !== null) read = (await readBytes(pid)) - before;
      return sparseSize / MiB / seconds;
    }, daemon);
    await fsp.rm(copy, { force: true });
    if (pid === null) ctx.rec.na(readId, system, 'no daemon');
    else ctx.rec.add(readId, system, read / MiB);
  };
  const firstTouch = (system: System, id: string, path: string, daemon?: Blksnapfs): Promise<number> =>
    measure(ctx, id, system, async () => (await fio({ filename: path, rw: 'randwrite', bs: '4k', iodepth: 16, iolog })).iops, daemon);

  for (let rep = 1; rep <= reps; rep++) {
    ctx.log(`thin images: repetition ${rep}/${reps}`);
    await writeFirstTouchLog(iolog, firstTouchRegion, chunk, 100 + rep);
    await session(ctx, 'raw', owes, async () => {
      await cp('raw', origin, null);
      await firstTouch('raw', hole, holes);
      await firstTouch('raw', data, ctx.image);
      await must('truncate', ['-s', '0', holes]); // back to all hole for the systems below
      await must('truncate', ['-s', String(ctx.cfg.size), holes]);
    });
    for (const { system, transport } of bsfSystems(ctx, rep)) {
      await session(ctx, system, owes, async (scope) => {
        const b = scope.track(await mountBsf(ctx, { origin, diffSize: 64 * MiB, transport }));
        await b.take('s');
        await cp(system, b.image('s'), b.pid, b);
        await b.stop();
        for (const [id, path] of [[hole, holes], [data, ctx.image]] as const) {
          const m = scope.track(await mountBsf(ctx, { origin: path, diffSize: firstTouchRegion + 64 * MiB, transport }));
          await m.take('s');
          await firstTouch(system, id, m.origin, m);
          const st = (await m.status()).diff_storage;
          ctx.rec.fact(id, 'saved_chunks', st.saved_chunks);
          if (st.hole_chunks !== undefined) ctx.rec.fact(id, 'hole_chunks', st.hole_chunks);
          await m.stop();
        }
        await must('truncate', ['-s', '0', holes]);
        await must('truncate', ['-s', String(ctx.cfg.size), holes]);
      });
    }
    await session(ctx, 'qsd', owes, async (scope) => {
      const q = scope.track(await startQsd(ctx, { origin, originSize: sparseSize }));
      const f = await q.addFleece('s');
      await cp('qsd', f.image, q.pid);
      await q.stop();
      for (const [id, path] of [[hole, holes], [data, ctx.image]] as const) {
        const qq = scope.track(await startQsd(ctx, { origin: path, originSize: ctx.cfg.size }));
        await qq.addFleece('s');
        await firstTouch('qsd', id, qq.originExport);
        await qq.stop();
      }
      await must('truncate', ['-s', '0', holes]);
      await must('truncate', ['-s', String(ctx.cfg.size), holes]);
    });
  }
}
