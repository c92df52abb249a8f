/**
 * Snapshot take latency and daemon memory against origin size (sparse origins of
 * 1 GiB, 1 TiB, 16 TiB with the default geometry), daemon memory against chunks
 * saved, and first-write throughput with 1, 2, 4, 8 snapshots held.
 */
import { join } from 'node:path';
import type { Ctx } from '../lib/context.js';
import { bsfSystems, mountBsf, startQsd } from '../lib/context.js';
import { ROOT } from '../lib/blksnapfs.js';
import { must } from '../lib/proc.js';
import { ddWrite, fio, GiB, MiB, TiB } from '../lib/tools.js';
import { measure, session } from './common.js';

function sizeLabel(bytes: number): string {
  if (bytes >= TiB) return `${bytes / TiB} TiB`;
  if (bytes >= GiB) return `${bytes / GiB} GiB`;
  return `${bytes / MiB} MiB`;
}

export async function takeAndOriginMemory(ctx: Ctx): Promise<void> {
  const { takeSizes, takesPerSize, reps } = ctx.cfg;
  for (const size of takeSizes) {
    const label = sizeLabel(size);
    const take = `take.${label}`;
    const idle = `mem.origin.idle.${label}`;
    const held = `mem.origin.snap.${label}`;
    ctx.rec.row(take, { section: 'Snapshot take', workload: `take, ${label} origin (sparse)`, tool: 'mkdir / QMP', state: 'default geometry', unit: 'ms' });
    ctx.rec.row(idle, { section: 'Memory', workload: `daemon VmHWM, ${label} origin`, tool: 'after mount', state: 'no snapshot', unit: 'MiB' });
    ctx.rec.row(held, { section: 'Memory', workload: `daemon VmHWM, ${label} origin`, tool: 'after 1 take', state: 'snapshot held', unit: 'MiB' });
    // ext4 files stop just short of 16 TiB: the sparse origins live on tmpfs.
    const origin = join(ctx.sparseDir, `sparse-${label.replace(' ', '')}.img`);
    await must('truncate', ['-s', String(size), origin]);
    ctx.log(`snapshot take: ${label}`);
    for (const { system, transport } of bsfSystems(ctx)) {
      await session(ctx, system, [take, idle, held], async (scope) => {
        for (let rep = 1; rep <= reps; rep++) {
          const b = scope.track(await mountBsf(ctx, { origin, chunk: null, diffSize: 64 * MiB, transport }));
          const st = await b.status();
          for (const r of [take, idle, held]) {
            ctx.rec.fact(r, 'chunk_size', st.chunk_size);
            ctx.rec.fact(r, 'block_size', st.block_size);
            ctx.rec.fact(r, 'block_count', st.block_count);
          }
          ctx.rec.add(idle, system, (await b.vmHWMKiB()) / 1024);
          await b.take('first');
          ctx.rec.add(held, system, (await b.vmHWMKiB()) / 1024);
          await b.destroy('first');
          for (let i = 0; i < Math.ceil(takesPerSize / reps); i++) {
            ctx.rec.add(take, system, await b.take(`t${i}`));
            await b.destroy(`t${i}`);
          }
          await b.stop();
        }
      });
    }
    await session(ctx, 'qsd', [take, idle, held], async (scope) => {
      const q = scope.track(await startQsd(ctx, { origin, originSize: size }));
      for (let rep = 1; rep <= reps; rep++) {
        if (rep > 1) await q.restart();
        ctx.rec.add(idle, 'qsd', (await q.vmHWMKiB()) / 1024);
        ctx.rec.add(take, 'qsd', (await q.addFleece('s')).takeMs);
        ctx.rec.add(held, 'qsd', (await q.vmHWMKiB()) / 1024);
      }
    });
  }
}

/**
 * Peak memory against chunks saved: write the same bytes with and without a snapshot
 * (small chunks, so there are many), and charge the difference to the saved chunks.
 */
export async function chunkMemory(ctx: Ctx): Promise<void> {
  const { memChunk, memBytes, reps } = ctx.cfg;
  const steps = 4;
  const step = memBytes / steps;
  const id = (state: string, k: number): string => `mem.chunks.${state}.${k}`;
  const perChunk = 'mem.per-chunk';
  for (let k = 0; k <= steps; k++) {
    const spec = { section: 'Memory', workload: `daemon VmHWM, ${sizeLabel(k * step)} written`, tool: `chunk ${memChunk / 1024}K`, unit: 'MiB' as const };
    ctx.rec.row(id('ctrl', k), { ...spec, state: 'no snapshot' });
    ctx.rec.row(id('snap', k), { ...spec, state: 'snapshot held (all first writes)' });
  }
  ctx.rec.row(perChunk, { section: 'Memory', workload: 'bytes per saved chunk', tool: `(held - no snapshot) / chunks`, state: `after ${sizeLabel(memBytes)}`, unit: 'B' });
  const owes = [perChunk, ...Array.from({ length: steps + 1 }, (_v, k) => [id('ctrl', k), id('snap', k)]).flat()];
  for (let rep = 1; rep <= reps; rep++) {
    ctx.log(`memory vs chunks: repetition ${rep}/${reps}`);
    for (const { system, transport } of bsfSystems(ctx, rep)) {
      await session(ctx, system, owes, async (scope) => {
        const hwm: Record<string, number> = {};
        for (const state of ['ctrl', 'snap']) {
          const b = scope.track(await mountBsf(ctx, { chunk: memChunk, diffSize: memBytes + 64 * MiB, transport }));
          if (state === 'snap') await b.take('s');
          for (let k = 0; k <= steps; k++) {
            if (k > 0) await ddWrite(b.origin, step, (k - 1) * step);
            const v = (await b.vmHWMKiB()) / 1024;
            hwm[`${state}${k}`] = v;
            ctx.rec.add(id(state, k), system, v);
            if (state === 'snap') ctx.rec.fact(id(state, k), 'saved_chunks', (await b.status()).diff_storage.saved_chunks);
          }
          if (state === 'snap') {
            const saved = (await b.status()).diff_storage.saved_chunks;
            ctx.rec.fact(perChunk, 'saved_chunks', saved);
            ctx.rec.add(perChunk, system, (((hwm[`snap${steps}`] ?? 0) - (hwm[`ctrl${steps}`] ?? 0)) * MiB) / saved);
          }
          await b.stop();
        }
      });
    }
  }
  // What is kept, without the collector's slack: the engine's tables alone, forced GC.
  const probe = join(ROOT, 'dist', 'bench', 'lib', 'retained-probe.js');
  const patterns: Array<[string, string, number, number]> = [
    ['dense', 'sequential first writes', memBytes / memChunk, 2 ** 21],
    ['scattered', 'random chunks, 2^21 chunks (default geometry cap)', 16384, 2 ** 21],
    ['scattered', 'random chunks, 2^28 chunks (16 TiB at chunk_size=64K)', 16384, 2 ** 28],
  ];
  for (const [i, [pattern, label, n, space]] of patterns.entries()) {
    const rid = `mem.retained.${i}`;
    ctx.rec.row(rid, { section: 'Memory', workload: 'retained bytes per saved chunk', tool: 'engine copy table, forced GC', state: `${n} ${label}`, unit: 'B' });
    for (let rep = 1; rep <= reps; rep++) {
      const r = await must(process.execPath, ['--expose-gc', probe, String(n), pattern, String(space)]);
      const out = JSON.parse(r.stdout) as { perChunk: number };
      ctx.rec.add(rid, 'blksnapfs', out.perChunk);
    }
  }
  for (const k of Array.from({ length: steps + 1 }, (_v, i) => i)) {
    ctx.rec.na(id('ctrl', k), 'qsd', 'copy unit is max(64K, cluster); see the 64K row');
    ctx.rec.na(id('snap', k), 'qsd', 'copy unit is max(64K, cluster); see the 64K row');
  }
}

/** First-write throughput while k snapshots are held (one copy should serve them all). */
export async function multiSnapshot(ctx: Ctx): Promise<void> {
  const { multi, multiBytes, reps } = ctx.cfg;
  const id = (k: number): string => `multi.${k}`;
  for (const k of multi) {
    ctx.rec.row(id(k), { section: 'Snapshots held', workload: `first write ${sizeLabel(multiBytes)}`, tool: 'fio 1M O_DIRECT qd4', state: `${k} snapshot${k > 1 ? 's' : ''} held (qsd: filter chain from start)`, unit: 'MiB/s' });
  }
  const all = multi.map(id);
  const write = async (path: string): Promise<number> => (await fio({ filename: path, rw: 'write', bs: '1M', iodepth: 4, size: multiBytes })).mibs;
  for (let rep = 1; rep <= reps; rep++) {
    ctx.log(`snapshots held: repetition ${rep}/${reps}`);
    for (const { system, transport } of bsfSystems(ctx, rep)) {
      await session(ctx, system, all, async (scope) => {
        // A fresh mount for each k: the same empty difference storage every time.
        for (const k of multi) {
          const b = scope.track(await mountBsf(ctx, { diffSize: multiBytes + 64 * MiB, transport }));
          for (let i = 0; i < k; i++) await b.take(`m${i}`);
          await measure(ctx, id(k), system, () => write(b.origin), b);
          ctx.rec.fact(id(k), 'saved_chunks', (await b.status()).diff_storage.saved_chunks);
          await b.stop();
        }
      });
    }
    await session(ctx, 'qsd', all, async (scope) => {
      const q = scope.track(await startQsd(ctx));
      for (const k of multi) {
        // 7.2 can hold several snapshots only from the command line (see qsd.ts).
        await q.restart(Array.from({ length: k }, (_v, i) => `m${i}`));
        await measure(ctx, id(k), 'qsd', () => write(q.originExport));
      }
    });
  }
}
