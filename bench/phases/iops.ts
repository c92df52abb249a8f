/**
 * Small requests with no snapshot, where blksnapfs's request path is all there is to
 * pay (the native fast path's rows, issue 14): 4 KiB random reads at queue depth 1 and
 * 16, a 70/30 random read/write mix at queue depth 16, and 16 jobs each writing 4 KiB
 * synchronously (psync: one request in flight per job, so 16 only if the kernel lets
 * synchronous direct writes to one file run in parallel). Time-based over the steady
 * region, the same job on every system.
 */
import type { Ctx } from '../lib/context.js';
import { bsfSystems, mountBsf, startQsd } from '../lib/context.js';
import type { Blksnapfs } from '../lib/blksnapfs.js';
import { fio, MiB, type FioJob } from '../lib/tools.js';
import type { System } from '../lib/results.js';
import { measure, session } from './common.js';

interface IopsRow {
  id: string;
  workload: string;
  job: Omit<FioJob, 'filename' | 'size' | 'runtimeSec'>;
}

const ROWS: readonly IopsRow[] = [
  { id: 'rr.qd1.nosnap', workload: '4K randread qd1', job: { rw: 'randread', bs: '4k', iodepth: 1 } },
  { id: 'rr.qd16.nosnap', workload: '4K randread qd16', job: { rw: 'randread', bs: '4k', iodepth: 16 } },
  { id: 'mix.qd16.nosnap', workload: '4K randrw 70/30 qd16', job: { rw: 'randrw', rwmixread: 70, bs: '4k', iodepth: 16 } },
  { id: 'psync16.nosnap', workload: '4K randwrite, 16 jobs psync', job: { rw: 'randwrite', bs: '4k', iodepth: 1, ioengine: 'psync', numjobs: 16 } },
];

export async function smallRequests(ctx: Ctx): Promise<void> {
  const { reps, steadyRegion, steadySec } = ctx.cfg;
  for (const r of ROWS) {
    ctx.rec.row(r.id, { section: '4 KiB random I/O, no snapshot', workload: r.workload, tool: `fio ${steadySec}s, ${steadyRegion / MiB} MiB`, state: 'origin, no snapshot', unit: 'IOPS' });
  }
  const ids = ROWS.map((r) => r.id);
  const all = async (sys: System, path: string, daemon?: Blksnapfs): Promise<void> => {
    for (const r of ROWS) {
      await measure(ctx, r.id, sys, async () => (await fio({ ...r.job, filename: path, size: steadyRegion, runtimeSec: steadySec, extra: ['--norandommap', '--randrepeat=1'] })).iops, daemon);
    }
  };
  for (let rep = 1; rep <= reps; rep++) {
    ctx.log(`small requests: repetition ${rep}/${reps}`);
    await session(ctx, 'raw', ids, () => all('raw', ctx.image));
    for (const { system, transport } of bsfSystems(ctx, rep)) {
      await session(ctx, system, ids, async (scope) => {
        const b = scope.track(await mountBsf(ctx, { diffSize: 64 * MiB, transport }));
        await all(system, b.origin, b);
      });
    }
    await session(ctx, 'qsd', ids, async (scope) => {
      const q = scope.track(await startQsd(ctx));
      await all('qsd', q.originExport);
    });
  }
}
