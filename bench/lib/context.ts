/**
 * What every phase gets: the sizes of this run (quick or full), the scratch directory,
 * the recorder, the cleanup stack, and ways to bring up each system under test.
 */
import { join } from 'node:path';
import { Blksnapfs } from './blksnapfs.js';
import { Qsd } from './qsd.js';
import type { Cleanup } from './cleanup.js';
import { variantOf, type BsfSystem, type BsfVariant, type Recorder } from './results.js';
import { GiB, KiB, MiB, TiB } from './tools.js';

export const PHASES = ['seqwrite', 'seqread', 'randwrite', 'iops', 'take', 'memory', 'multi', 'sparse'] as const;
export type Phase = (typeof PHASES)[number];

export interface Config {
  mode: 'quick' | 'full';
  reps: number;
  /** Bytes of the sequential workloads (and the size of the bench origin image). */
  size: number;
  /** Chunk for the blksnapfs/qsd comparison (qcow2 cluster_size, blksnapfs chunk_size). */
  chunk: number;
  /** Region of first-touch random writes (one 4 KiB write per chunk). */
  firstTouchRegion: number;
  /** Region and duration of steady-state random writes. */
  steadyRegion: number;
  steadySec: number;
  /** Origin sizes for the snapshot-take and memory-vs-origin measurements. */
  takeSizes: number[];
  takesPerSize: number;
  /** Chunk size and written bytes of the memory-vs-chunks measurement. */
  memChunk: number;
  memBytes: number;
  /** Snapshots held at once, and bytes written, for the multi-snapshot measurement. */
  multi: number[];
  multiBytes: number;
  /** Size of the sparse origin (5% data) whose image cp --sparse=always copies. */
  sparseSize: number;
  phases: Set<Phase>;
  /** Systems to run (raw, blksnapfs, qsd). */
  withQsd: boolean;
  /** The blksnapfs systems of this run (libfuse3 with and without the fast path, fuse-native), in the order they run. */
  systems: BsfSystem[];
  profileDir: string | null;
}

export function makeConfig(quick: boolean): Omit<Config, 'phases' | 'withQsd' | 'profileDir' | 'systems'> {
  return quick
    ? {
        mode: 'quick', reps: 3, size: 256 * MiB, chunk: 64 * KiB,
        firstTouchRegion: 64 * MiB, steadyRegion: 64 * MiB, steadySec: 2,
        takeSizes: [GiB, TiB, 16 * TiB], takesPerSize: 5,
        memChunk: 4 * KiB, memBytes: 128 * MiB,
        multi: [1, 2, 4, 8], multiBytes: 64 * MiB,
        sparseSize: 512 * MiB,
      }
    : {
        mode: 'full', reps: 3, size: GiB, chunk: 64 * KiB,
        firstTouchRegion: 512 * MiB, steadyRegion: 256 * MiB, steadySec: 6,
        takeSizes: [GiB, TiB, 16 * TiB], takesPerSize: 7,
        memChunk: 4 * KiB, memBytes: GiB,
        multi: [1, 2, 4, 8], multiBytes: 512 * MiB,
        sparseSize: 4 * GiB,
      };
}

export interface Ctx {
  cfg: Config;
  cleanup: Cleanup;
  rec: Recorder;
  dir: string;
  /** tmpfs directory for sparse origins too big for ext4 (16 TiB). */
  sparseDir: string;
  /** The bench origin: `cfg.size` bytes of data on ext4. */
  image: string;
  log: (line: string) => void;
  /** Why qsd cannot run here, if it cannot (then its cells are n/a with this reason). */
  qsdUnavailable: string | null;
}

let mountSeq = 0;

/**
 * The blksnapfs systems of this run, each with how it is mounted. Repetition `rep`
 * (from 1) starts one system further along, so that no system always runs right after
 * the raw file (whose writes the disk may still be settling) or always last.
 */
export function bsfSystems(ctx: Ctx, rep = 1): Array<{ system: BsfSystem; transport: BsfVariant }> {
  const all = ctx.cfg.systems;
  const shift = all.length === 0 ? 0 : (rep - 1) % all.length;
  return [...all.slice(shift), ...all.slice(0, shift)].map((system) => ({ system, transport: variantOf(system) }));
}

/** Mount blksnapfs over `origin` as `transport` says, with its own difference storage in the scratch dir. */
export function mountBsf(ctx: Ctx, opts: { origin?: string; chunk?: number | null; diffSize: number; transport: BsfVariant; extra?: string }): Promise<Blksnapfs> {
  const n = ++mountSeq;
  const options = [
    `diff_storage=${join(ctx.dir, `bsf${n}.diff`)}`,
    `diff_size=${opts.diffSize}`,
    ...(opts.chunk === null ? [] : [`chunk_size=${opts.chunk ?? ctx.cfg.chunk}`]),
    `log=${join(ctx.dir, 'blksnapfs.log')}`,
    'log_level=warn',
    `transport=${opts.transport.transport}`,
    `fast_path=${opts.transport.fastPath ? 'on' : 'off'}`,
    ...(opts.extra === undefined ? [] : [opts.extra]),
  ].join(',');
  const nodeFlags = ctx.cfg.profileDir === null ? [] : ['--cpu-prof', `--cpu-prof-dir=${ctx.cfg.profileDir}`];
  return Blksnapfs.mount({ origin: opts.origin ?? ctx.image, mnt: join(ctx.dir, `mnt${n}`), options, nodeFlags }, ctx.cleanup);
}

export function startQsd(ctx: Ctx, opts: { origin?: string; originSize?: number } = {}): Promise<Qsd> {
  return Qsd.start({
    dir: ctx.dir,
    origin: opts.origin ?? ctx.image,
    originSize: opts.originSize ?? ctx.cfg.size,
    clusterSize: ctx.cfg.chunk,
  }, ctx.cleanup);
}
