/**
 * `npm run bench`: blksnapfs against the raw image file and qemu-storage-daemon's
 * fleecing (copy-before-write + qcow2 backed by the origin), in one run.
 *
 *   npm run bench                 full run (1 GiB streams; about 15 minutes on 2 cores)
 *   npm run bench -- --quick      smoke run (smaller sizes, a few minutes)
 *   npm run bench -- --only seqwrite,take --reps 5 --no-qsd --profile /tmp/prof
 *   npm run bench -- --only iops,randwrite --transport libfuse3 --fast-path on,off
 *
 * Installs fio and qemu-storage-daemon when missing, makes a scratch origin on ext4,
 * runs the phases, prints the tables and the targets, writes a JSON (and markdown)
 * results file, and takes down every mount and daemon it started, also on failure or
 * Ctrl-C. Needs root (FUSE mounts, /proc/sys/vm/drop_caches).
 */
import { promises as fsp, statfsSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { Cleanup } from './lib/cleanup.js';
import { makeConfig, PHASES, type Config, type Ctx, type Phase } from './lib/context.js';
import { Recorder } from './lib/results.js';
import { evaluateTargets, loadPreviousRun, renderRun } from './lib/report.js';
import type { BsfSystem } from './lib/results.js';
import { TRANSPORTS, type TransportName } from '../src/fuse/transport.js';
import { ROOT } from './lib/blksnapfs.js';
import { must, run, stopping } from './lib/proc.js';
import { ensureTools, fio, GiB, MiB } from './lib/tools.js';
import { failures } from './phases/common.js';
import { seqRead, seqWrite, STORAGE_BOUND } from './phases/sequential.js';
import { randomWrite } from './phases/random.js';
import { smallRequests } from './phases/iops.js';
import { chunkMemory, multiSnapshot, takeAndOriginMemory } from './phases/snapshots.js';
import { sparseImages } from './phases/sparse.js';

const USAGE = `usage: npm run bench -- [--quick] [--reps N] [--only PHASE,...] [--transport T,...] [--fast-path on,off] [--no-qsd] [--profile DIR] [--out FILE.json]
phases: ${PHASES.join(', ')}
transports: ${TRANSPORTS.join(', ')} (default: both, blksnapfs on each)
fast path: on, off (default: both, for libfuse3; fuse-native has none)`;

interface Args {
  quick: boolean;
  reps: number | null;
  only: Set<Phase> | null;
  transports: TransportName[];
  fastPath: Array<'on' | 'off'>;
  qsd: boolean;
  profile: string | null;
  out: string | null;
}

function parseArgs(argv: readonly string[]): Args {
  const a: Args = { quick: false, reps: null, only: null, transports: [...TRANSPORTS], fastPath: ['on', 'off'], qsd: true, profile: null, out: null };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${arg} needs a value\n${USAGE}`);
      return v;
    };
    switch (arg) {
      case '--quick': a.quick = true; break;
      case '--full': a.quick = false; break;
      case '--reps': {
        const n = Number(value());
        if (!Number.isInteger(n) || n < 1) throw new Error('--reps takes a positive integer');
        a.reps = n;
        break;
      }
      case '--only': {
        const list = value().split(',').map((s) => s.trim());
        for (const p of list) if (!(PHASES as readonly string[]).includes(p)) throw new Error(`unknown phase ${p}\n${USAGE}`);
        a.only = new Set(list as Phase[]);
        break;
      }
      case '--transport': {
        const list = value().split(',').map((s) => s.trim());
        for (const t of list) if (!(TRANSPORTS as readonly string[]).includes(t)) throw new Error(`unknown transport ${t}\n${USAGE}`);
        // Always in the same order, so that the repetitions interleave the same way.
        a.transports = TRANSPORTS.filter((t) => list.includes(t));
        break;
      }
      case '--fast-path': {
        const list = value().split(',').map((s) => s.trim());
        for (const v of list) if (v !== 'on' && v !== 'off') throw new Error(`--fast-path takes on, off or on,off\n${USAGE}`);
        a.fastPath = (['on', 'off'] as const).filter((v) => list.includes(v));
        break;
      }
      case '--no-qsd': a.qsd = false; break;
      case '--profile': a.profile = value(); break;
      case '--out': a.out = value(); break;
      case '-h': case '--help': process.stdout.write(`${USAGE}\n`); process.exit(0); break;
      default: throw new Error(`unknown argument ${arg}\n${USAGE}`);
    }
  }
  return a;
}

const t0 = Date.now();
const cleanup = new Cleanup();
function log(line: string): void {
  const s = ((Date.now() - t0) / 1000).toFixed(0).padStart(4);
  process.stderr.write(`[${s}s] ${line}\n`);
}

async function versionOf(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args);
  return r.code === 0 ? (r.stdout.split('\n')[0] ?? '').trim() : `unavailable (${r.stderr.trim().slice(0, 80)})`;
}


/** The blksnapfs systems: libfuse3 with the fast path on and/or off, and fuse-native. */
function systemsOf(transports: readonly TransportName[], fastPath: ReadonlyArray<'on' | 'off'>): BsfSystem[] {
  const out: BsfSystem[] = [];
  if (transports.includes('libfuse3')) {
    if (fastPath.includes('on')) out.push('blksnapfs');
    if (fastPath.includes('off')) out.push('blksnapfs-off');
  }
  if (transports.includes('fuse-native')) out.push('blksnapfs-fn');
  return out;
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) throw new Error('the bench needs root (FUSE mounts, /proc/sys/vm/drop_caches)');

  const cfg: Config = {
    ...makeConfig(args.quick),
    phases: args.only ?? new Set(PHASES),
    withQsd: args.qsd,
    systems: systemsOf(args.transports, args.fastPath),
    profileDir: args.profile,
  };
  if (args.reps !== null) cfg.reps = args.reps;

  // Read before this run may overwrite it: the dd rows are judged against it.
  const previous = await loadPreviousRun(join(ROOT, 'bench', 'results', 'latest-full.json'));
  await ensureTools(log, { qsd: args.qsd });
  const base = process.env['BLKSNAPFS_BENCH_DIR'] ?? '/var/tmp/blksnapfs-bench';
  await fsp.mkdir(base, { recursive: true });
  const needed = (args.quick ? 3 : 12) * GiB;
  const fsStat = statfsSync(base);
  if (fsStat.bavail * fsStat.bsize < needed) throw new Error(`${base} has less than ${needed / GiB} GiB free`);
  const dir = await fsp.mkdtemp(join(base, 'run-'));
  cleanup.add(`scratch ${dir}`, () => fsp.rm(dir, { recursive: true, force: true }));
  const sparseDir = await fsp.mkdtemp('/dev/shm/blksnapfs-bench-');
  cleanup.add(`sparse origins ${sparseDir}`, () => fsp.rm(sparseDir, { recursive: true, force: true }));
  if (cfg.profileDir !== null) await fsp.mkdir(cfg.profileDir, { recursive: true });

  let qsdUnavailable: string | null = null;
  if (!cfg.withQsd) qsdUnavailable = 'skipped (--no-qsd)';
  else if ((await run('qemu-storage-daemon', ['--version'])).code !== 0) qsdUnavailable = 'qemu-storage-daemon is not installed';

  const rec = new Recorder();
  const image = join(dir, 'origin.img');
  const ctx: Ctx = { cfg, cleanup, rec, dir, sparseDir, image, log, qsdUnavailable };
  const meta = {
    mode: cfg.mode,
    started: new Date().toISOString(),
    finished: '',
    reps: cfg.reps,
    sizes: { seq: cfg.size, chunk: cfg.chunk, first_touch_region: cfg.firstTouchRegion, steady_region: cfg.steadyRegion, steady_seconds: cfg.steadySec, mem_chunk: cfg.memChunk, mem_bytes: cfg.memBytes, multi_bytes: cfg.multiBytes, sparse_origin: cfg.sparseSize },
    machine: { cpus: cpus().length, cpu: cpus()[0]?.model ?? '?', kernel: (await versionOf('uname', ['-r'])), loadavg_start: loadavg() },
    versions: {
      node: process.version,
      fio: await versionOf('fio', ['--version']),
      qemu_storage_daemon: await versionOf('qemu-storage-daemon', ['--version']),
      blksnapfs_commit: await versionOf('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD']),
    },
    qsd_setup: 'file node (cache.direct=off, aio=threads) -> raw node exported by FUSE (writable); snapshot = copy-before-write filter inserted by blockdev-reopen, target qcow2 (cluster_size = chunk, cache.direct=on) with backing = the origin file node, exported read-only by FUSE',
    scratch: dir,
    loadavg_end: [0, 0, 0],
    failures,
    systems: cfg.systems,
  };

  log(`blksnapfs bench (${cfg.mode}, ${cfg.reps} runs per figure) in ${dir}`);
  log(`making the ${cfg.size / MiB} MiB origin image`);
  await must('truncate', ['-s', String(cfg.size), image]);
  await fio({ filename: image, rw: 'write', bs: '1M', iodepth: 4, size: cfg.size });

  const phases: Array<[Phase, (c: Ctx) => Promise<void>]> = [
    ['seqwrite', seqWrite], ['seqread', seqRead], ['randwrite', randomWrite], ['iops', smallRequests],
    ['take', takeAndOriginMemory], ['memory', chunkMemory], ['multi', multiSnapshot],
    ['sparse', sparseImages],
  ];
  for (const [name, phase] of phases) {
    if (!cfg.phases.has(name)) continue;
    const started = Date.now();
    log(`phase ${name}`);
    await phase(ctx);
    log(`phase ${name} done in ${((Date.now() - started) / 1000).toFixed(0)} s`);
  }

  meta.finished = new Date().toISOString();
  meta.loadavg_end = loadavg();
  const targets = evaluateTargets(rec, { bigOrigin: '16 TiB', smallOrigin: '1 GiB', flatToleranceMiB: 2, previous, seqBytes: cfg.size, storageBound: STORAGE_BOUND });
  const markdown = renderRun(meta, rec, targets);
  process.stdout.write(`\n${markdown}\n`);

  const out = args.out ?? join(ROOT, 'bench', 'results', `latest-${cfg.mode}.json`);
  await fsp.mkdir(join(out, '..'), { recursive: true });
  await fsp.writeFile(out, `${JSON.stringify({ meta, rows: rec.rows, targets }, null, 2)}\n`);
  await fsp.writeFile(out.replace(/\.json$/, '') + '.md', `${markdown}\n`);
  log(`results: ${out}`);

  await cleanup.runAll();
  log(`done in ${((Date.now() - t0) / 60000).toFixed(1)} min`);
  if (failures.length > 0) {
    process.stderr.write(`bench: ${failures.length} session(s) failed:\n${failures.map((f) => `  ${f}`).join('\n')}\n`);
    return 1;
  }
  return 0;
}

const mainDone = main();
cleanup.installHandlers(() => mainDone);
mainDone.then(
  (code) => process.exit(code),
  (err: unknown) => {
    if (stopping.now) return; // the signal handler unwinds and exits
    process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    void cleanup.runAll().finally(() => process.exit(1));
  },
);
