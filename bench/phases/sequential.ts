/**
 * Sequential 1 MiB streams: dd (bs=1M, conv=fdatasync for writes) and fio (1 MiB,
 * O_DIRECT, libaio, queue depth 4). Writes: on the raw file, on each system's origin
 * with no snapshot, under a fresh snapshot (the first write to every chunk: the copy
 * path), and again under that snapshot (every chunk already saved). Also the physical
 * bound of a first write: fio 1M O_DIRECT into a freshly preallocated file on the
 * storage's file system, which is what every copy run does to the difference storage.
 * Reads: the raw file, each origin, and each snapshot image after half of its chunks
 * (every other one) were overwritten, so every 1 MiB read is served from both the saved
 * copies and the origin.
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import type { Ctx } from '../lib/context.js';
import { bsfSystems, mountBsf, startQsd } from '../lib/context.js';
import { ddRead, ddWrite, fio, MiB } from '../lib/tools.js';
import { must } from '../lib/proc.js';
import { measure, session } from './common.js';

const SECTION_W = 'Sequential write';
const SECTION_R = 'Sequential read';
/** Written once after each mount or daemon start, before anything is measured. */
const WARMUP = 64 * MiB;

type Tool = 'dd' | 'fio';
const TOOLS: readonly Tool[] = ['dd', 'fio'];

function toolLabel(tool: Tool): string {
  return tool === 'dd' ? 'dd bs=1M fdatasync' : 'fio 1M O_DIRECT qd4';
}

async function write(tool: Tool, path: string, bytes: number): Promise<number> {
  if (tool === 'dd') return (await ddWrite(path, bytes)).value;
  return (await fio({ filename: path, rw: 'write', bs: '1M', iodepth: 4, size: bytes })).mibs;
}

async function read(tool: Tool, path: string, bytes: number): Promise<number> {
  if (tool === 'dd') return (await ddRead(path, bytes)).value;
  return (await fio({ filename: path, rw: 'read', bs: '1M', iodepth: 4, size: bytes })).mibs;
}

/** Overwrite every other chunk (fio write:<gap>), so an image read mixes both sources. */
async function overwriteHalf(path: string, bytes: number, chunk: number): Promise<void> {
  await fio({ filename: path, rw: 'write', bs: String(chunk), iodepth: 4, size: bytes, extra: [`--rw=write:${chunk}`] });
}

/** The row of the storage's own O_DIRECT write bandwidth (see the header). */
export const STORAGE_BOUND = 'sw.storage-bound';

/**
 * fio 1M O_DIRECT qd4 into a new file preallocated with fallocate in the scratch
 * directory (where every difference storage of the run lives), as a copy run writes
 * into the difference storage: first writes into unwritten extents. MiB/s.
 */
async function writePreallocated(ctx: Ctx, bytes: number): Promise<number> {
  const file = join(ctx.dir, 'storage-bound.img');
  await must('fallocate', ['-l', String(bytes), file]);
  try {
    return (await fio({ filename: file, rw: 'write', bs: '1M', iodepth: 4, size: bytes })).mibs;
  } finally {
    await fsp.rm(file, { force: true });
  }
}

export async function seqWrite(ctx: Ctx): Promise<void> {
  const { size, reps, chunk } = ctx.cfg;
  const gib = `${size / MiB} MiB`;
  const id = (tool: Tool, state: string): string => `sw.${tool}.${state}`;
  for (const tool of TOOLS) {
    const spec = { section: SECTION_W, workload: `seq write ${gib}`, tool: toolLabel(tool), unit: 'MiB/s' as const };
    ctx.rec.row(id(tool, 'nosnap'), { ...spec, state: 'origin, no snapshot' });
    ctx.rec.row(id(tool, 'first'), { ...spec, state: 'snapshot held, first write' });
    ctx.rec.row(id(tool, 'over'), { ...spec, state: 'snapshot held, overwrite' });
  }
  const bound = STORAGE_BOUND;
  ctx.rec.row(bound, { section: SECTION_W, workload: `seq write ${gib}`, tool: 'fio 1M O_DIRECT qd4', state: 'a preallocated file on the storage\'s file system (the bound of a first write)', unit: 'MiB/s' });
  const hwm = 'mem.after-first-write';
  ctx.rec.row(hwm, { section: 'Memory', workload: `daemon VmHWM after first write of ${gib}`, tool: `chunk ${chunk / 1024}K`, state: 'snapshot held', unit: 'MiB' });
  const all = TOOLS.flatMap((t) => ['nosnap', 'first', 'over'].map((s) => id(t, s)));

  for (let rep = 1; rep <= reps; rep++) {
    ctx.log(`seq write: repetition ${rep}/${reps}`);
    await session(ctx, 'raw', [...all, bound], async () => {
      for (const tool of TOOLS) await measure(ctx, id(tool, 'nosnap'), 'raw', () => write(tool, ctx.image, size));
      await measure(ctx, bound, 'raw', () => writePreallocated(ctx, size));
    });
    for (const { system, transport } of bsfSystems(ctx, rep)) {
      await session(ctx, system, [...all, hwm], async (scope) => {
        const b = scope.track(await mountBsf(ctx, { diffSize: size + 64 * MiB, transport }));
        await ddWrite(b.origin, WARMUP); // a fresh daemon: let the JIT warm up first
        for (const tool of TOOLS) await measure(ctx, id(tool, 'nosnap'), system, () => write(tool, b.origin, size), b);
        for (const tool of TOOLS) {
          await b.take('s');
          await measure(ctx, id(tool, 'first'), system, () => write(tool, b.origin, size), b);
          await measure(ctx, id(tool, 'over'), system, () => write(tool, b.origin, size), b);
          const st = await b.status();
          ctx.rec.fact(id(tool, 'first'), 'saved_chunks', st.diff_storage.saved_chunks);
          if (tool === 'dd') ctx.rec.add(hwm, system, (await b.vmHWMKiB()) / 1024);
          await b.destroy('s');
        }
      });
    }
    await session(ctx, 'qsd', [...all, hwm], async (scope) => {
      const q = scope.track(await startQsd(ctx));
      await ddWrite(q.originExport, WARMUP);
      for (const tool of TOOLS) await measure(ctx, id(tool, 'nosnap'), 'qsd', () => write(tool, q.originExport, size));
      for (const tool of TOOLS) {
        await q.restart();
        await q.addFleece('s');
        await measure(ctx, id(tool, 'first'), 'qsd', () => write(tool, q.originExport, size));
        await measure(ctx, id(tool, 'over'), 'qsd', () => write(tool, q.originExport, size));
        if (tool === 'dd') ctx.rec.add(hwm, 'qsd', (await q.vmHWMKiB()) / 1024);
      }
    });
  }
}

export async function seqRead(ctx: Ctx): Promise<void> {
  const { size, reps, chunk } = ctx.cfg;
  const gib = `${size / MiB} MiB`;
  const id = (tool: Tool, state: string): string => `sr.${tool}.${state}`;
  for (const tool of TOOLS) {
    const spec = { section: SECTION_R, workload: `seq read ${gib}`, tool: tool === 'dd' ? 'dd bs=1M' : toolLabel(tool), unit: 'MiB/s' as const };
    ctx.rec.row(id(tool, 'origin'), { ...spec, state: 'origin (raw: the file)' });
    ctx.rec.row(id(tool, 'image'), { ...spec, state: 'image, half the chunks saved' });
  }
  const all = TOOLS.flatMap((t) => [id(t, 'origin'), id(t, 'image')]);
  for (let rep = 1; rep <= reps; rep++) {
    ctx.log(`seq read: repetition ${rep}/${reps}`);
    await session(ctx, 'raw', all, async () => {
      for (const tool of TOOLS) await measure(ctx, id(tool, 'origin'), 'raw', () => read(tool, ctx.image, size));
    });
    for (const { system, transport } of bsfSystems(ctx, rep)) {
      await session(ctx, system, all, async (scope) => {
        const b = scope.track(await mountBsf(ctx, { diffSize: size + 64 * MiB, transport }));
        for (const tool of TOOLS) await measure(ctx, id(tool, 'origin'), system, () => read(tool, b.origin, size), b);
        await b.take('s');
        await overwriteHalf(b.origin, size, chunk);
        ctx.rec.fact(id('dd', 'image'), 'saved_chunks', (await b.status()).diff_storage.saved_chunks);
        for (const tool of TOOLS) await measure(ctx, id(tool, 'image'), system, () => read(tool, b.image('s'), size), b);
        await b.destroy('s');
      });
    }
    await session(ctx, 'qsd', all, async (scope) => {
      const q = scope.track(await startQsd(ctx));
      for (const tool of TOOLS) await measure(ctx, id(tool, 'origin'), 'qsd', () => read(tool, q.originExport, size));
      const f = await q.addFleece('s');
      await overwriteHalf(q.originExport, size, chunk);
      for (const tool of TOOLS) await measure(ctx, id(tool, 'image'), 'qsd', () => read(tool, f.image, size));
    });
  }
}
