/**
 * 4 KiB random writes with fio (libaio, O_DIRECT), at queue depth 1 and 16:
 * - no snapshot: time-based over the steady region;
 * - first touch: a fresh snapshot, and one 4 KiB write into every chunk of the
 *   first-touch region, in random order (a replayed iolog: each write pays a copy);
 * - steady state: the steady region's chunks all saved already (a sequential write
 *   under the snapshot first), then time-based random writes over it.
 * The raw file runs the same job files (same offsets) for reference.
 */
import { join } from 'node:path';
import type { Ctx } from '../lib/context.js';
import { bsfSystems, mountBsf, startQsd } from '../lib/context.js';
import type { Blksnapfs } from '../lib/blksnapfs.js';
import { ddWrite, fio, MiB, writeFirstTouchLog } from '../lib/tools.js';
import type { System } from '../lib/results.js';
import { measure, session } from './common.js';

const DEPTHS = [1, 16] as const;

export async function randomWrite(ctx: Ctx): Promise<void> {
  const { reps, chunk, firstTouchRegion, steadyRegion, steadySec } = ctx.cfg;
  const id = (qd: number, state: string): string => `rw.qd${qd}.${state}`;
  for (const qd of DEPTHS) {
    const spec = { section: '4 KiB random write', workload: `4K randwrite qd${qd}`, unit: 'IOPS' as const };
    ctx.rec.row(id(qd, 'nosnap'), { ...spec, tool: `fio ${steadySec}s, ${steadyRegion / MiB} MiB`, state: 'origin, no snapshot' });
    ctx.rec.row(id(qd, 'first'), { ...spec, tool: `fio iolog, ${firstTouchRegion / chunk} writes`, state: 'snapshot held, first touch' });
    ctx.rec.row(id(qd, 'steady'), { ...spec, tool: `fio ${steadySec}s, ${steadyRegion / MiB} MiB`, state: 'snapshot held, steady state' });
  }
  const all = DEPTHS.flatMap((qd) => ['nosnap', 'first', 'steady'].map((s) => id(qd, s)));
  const iolog = join(ctx.dir, 'first-touch.iolog');

  const steady = (sys: System, rowId: string, path: string, qd: number, daemon?: Blksnapfs): Promise<number> =>
    measure(ctx, rowId, sys, async () => (await fio({ filename: path, rw: 'randwrite', bs: '4k', iodepth: qd, size: steadyRegion, runtimeSec: steadySec, extra: ['--norandommap', '--randrepeat=1'] })).iops, daemon);
  const firstTouch = (sys: System, rowId: string, path: string, qd: number, daemon?: Blksnapfs): Promise<number> =>
    measure(ctx, rowId, sys, async () => (await fio({ filename: path, rw: 'randwrite', bs: '4k', iodepth: qd, iolog })).iops, daemon);

  for (let rep = 1; rep <= reps; rep++) {
    ctx.log(`random write: repetition ${rep}/${reps}`);
    // A new random order each repetition, the same for every system within it.
    await writeFirstTouchLog(iolog, firstTouchRegion, chunk, rep);
    await session(ctx, 'raw', all, async () => {
      for (const qd of DEPTHS) {
        await steady('raw', id(qd, 'nosnap'), ctx.image, qd);
        await firstTouch('raw', id(qd, 'first'), ctx.image, qd);
      }
    });
    for (const { system, transport } of bsfSystems(ctx, rep)) {
      await session(ctx, system, all, async (scope) => {
        const b = scope.track(await mountBsf(ctx, { diffSize: Math.max(firstTouchRegion, steadyRegion) + 64 * MiB, transport }));
        for (const qd of DEPTHS) await steady(system, id(qd, 'nosnap'), b.origin, qd, b);
        for (const qd of DEPTHS) {
          await b.take('s');
          await firstTouch(system, id(qd, 'first'), b.origin, qd, b);
          ctx.rec.fact(id(qd, 'first'), 'saved_chunks', (await b.status()).diff_storage.saved_chunks);
          await b.destroy('s');
        }
        await b.take('s');
        await ddWrite(b.origin, steadyRegion);
        for (const qd of DEPTHS) await steady(system, id(qd, 'steady'), b.origin, qd, b);
        await b.destroy('s');
      });
    }
    await session(ctx, 'qsd', all, async (scope) => {
      const q = scope.track(await startQsd(ctx));
      for (const qd of DEPTHS) await steady('qsd', id(qd, 'nosnap'), q.originExport, qd);
      for (const qd of DEPTHS) {
        await q.restart();
        await q.addFleece('s');
        await firstTouch('qsd', id(qd, 'first'), q.originExport, qd);
      }
      await q.restart();
      await q.addFleece('s');
      await ddWrite(q.originExport, steadyRegion);
      for (const qd of DEPTHS) await steady('qsd', id(qd, 'steady'), q.originExport, qd);
    });
  }
}
