/**
 * The load generators and the machine knobs: dd, fio, the page-cache drop, and the
 * one-time installation of fio and qemu-storage-daemon (Debian packages) when missing.
 */
import { promises as fsp, writeFileSync } from 'node:fs';
import { must, run } from './proc.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const TiB = 1024 * GiB;

/**
 * Install fio, and qemu-storage-daemon unless the run leaves it out (`qsd` false), with
 * apt-get when they are missing (idempotent).
 */
export async function ensureTools(log: (s: string) => void, opts: { qsd: boolean } = { qsd: true }): Promise<void> {
  const missing: string[] = [];
  if ((await run('sh', ['-c', 'command -v fio'])).code !== 0) missing.push('fio');
  if (opts.qsd && (await run('sh', ['-c', 'command -v qemu-storage-daemon'])).code !== 0) missing.push('qemu-system-common');
  if (missing.length === 0) return;
  log(`installing ${missing.join(' ')} (apt-get)`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  let r = await run('apt-get', ['install', '-y', '-qq', ...missing], { env, timeoutMs: 900_000 });
  if (r.code !== 0) {
    await must('apt-get', ['update', '-qq'], { env, timeoutMs: 900_000 });
    r = await run('apt-get', ['install', '-y', '-qq', ...missing], { env, timeoutMs: 900_000 });
  }
  if (r.code !== 0) throw new Error(`apt-get install ${missing.join(' ')} failed: ${r.stderr.trim()}`);
}

/** Write back dirty pages and drop the page cache, so the next phase starts cold. */
export async function dropCaches(): Promise<void> {
  await must('sync', []);
  writeFileSync('/proc/sys/vm/drop_caches', '3\n');
}

export interface Throughput {
  /** MiB/s for streaming, IOPS for random I/O. */
  value: number;
  seconds: number;
}

/** dd's own summary line: "N bytes (...) copied, S s, R MB/s". */
function parseDd(stderr: string): { bytes: number; seconds: number } {
  const m = /(\d+) bytes .* copied, ([\d.e+-]+) s/.exec(stderr);
  if (m === null) throw new Error(`cannot parse dd output: ${stderr.trim()}`);
  return { bytes: Number(m[1]), seconds: Number(m[2]) };
}

/** dd bs=1M conv=fdatasync,notrunc from /dev/zero; MiB/s. conv=nocreat: never write beside a lost mount. */
export async function ddWrite(path: string, bytes: number, offset = 0): Promise<Throughput> {
  const r = await must('dd', ['if=/dev/zero', `of=${path}`, 'bs=1M', `count=${bytes / MiB}`, `seek=${offset / MiB}`, 'conv=fdatasync,notrunc,nocreat']);
  const { bytes: n, seconds } = parseDd(r.stderr);
  return { value: n / MiB / seconds, seconds };
}

/** dd bs=1M to /dev/null; MiB/s. */
export async function ddRead(path: string, bytes: number): Promise<Throughput> {
  const r = await must('dd', [`if=${path}`, 'of=/dev/null', 'bs=1M', `count=${bytes / MiB}`]);
  const { bytes: n, seconds } = parseDd(r.stderr);
  return { value: n / MiB / seconds, seconds };
}

export interface FioJob {
  filename: string;
  /** randrw: a mix, `rwmixread` percent reads; its result adds both sides. */
  rw: 'read' | 'write' | 'randwrite' | 'randread' | 'randrw';
  rwmixread?: number;
  /** libaio (the default: iodepth requests in flight from one thread) or psync (one synchronous request per job). */
  ioengine?: 'libaio' | 'psync';
  /** Jobs side by side (reported as one). */
  numjobs?: number;
  bs: string;
  iodepth: number;
  size?: number;
  offset?: number;
  runtimeSec?: number;
  /** Replay this iolog (first-touch random writes) instead of generating offsets. */
  iolog?: string;
  extra?: readonly string[];
}

interface FioSide {
  bw_bytes: number;
  iops: number;
  io_bytes: number;
  runtime: number;
}

interface FioOutput {
  jobs: Array<{ read: FioSide; write: FioSide; error: number }>;
}

export interface FioResult {
  mibs: number;
  iops: number;
  ios: number;
}

/** One fio job with libaio (or psync) and O_DIRECT; never creates or extends files. */
export async function fio(job: FioJob): Promise<FioResult> {
  const args = [
    '--name=bench', `--ioengine=${job.ioengine ?? 'libaio'}`, '--direct=1', `--rw=${job.rw}`, `--bs=${job.bs}`, `--iodepth=${job.iodepth}`,
    '--allow_file_create=0', '--fallocate=none', '--output-format=json',
  ];
  if (job.rwmixread !== undefined) args.push(`--rwmixread=${job.rwmixread}`);
  if (job.numjobs !== undefined) args.push(`--numjobs=${job.numjobs}`, '--group_reporting');
  if (job.iolog !== undefined) {
    args.push(`--read_iolog=${job.iolog}`, '--replay_no_stall=1', `--replay_redirect=${job.filename}`);
  } else {
    args.push(`--filename=${job.filename}`);
  }
  if (job.size !== undefined) args.push(`--size=${job.size}`);
  if (job.offset !== undefined) args.push(`--offset=${job.offset}`);
  if (job.runtimeSec !== undefined) args.push('--time_based', `--runtime=${job.runtimeSec}`);
  if (job.rw === 'read' || job.rw === 'randread') args.push('--readonly');
  if (job.rw === 'write' || job.rw === 'randwrite' || job.rw === 'randrw') args.push('--end_fsync=1');
  args.push(...(job.extra ?? []));
  const r = await must('fio', args);
  const start = r.stdout.indexOf('{');
  const out = JSON.parse(r.stdout.slice(start)) as FioOutput;
  const j = out.jobs[0];
  if (j === undefined) throw new Error('fio printed no job');
  if (j.error !== 0) throw new Error(`fio job error ${j.error}`);
  if (job.rw === 'randrw') {
    return { mibs: (j.read.bw_bytes + j.write.bw_bytes) / MiB, iops: j.read.iops + j.write.iops, ios: Math.round((j.read.io_bytes + j.write.io_bytes) / 4096) };
  }
  const side = job.rw === 'read' || job.rw === 'randread' ? j.read : j.write;
  return { mibs: side.bw_bytes / MiB, iops: side.iops, ios: Math.round(side.io_bytes / 4096) };
}

/** A deterministic PRNG (mulberry32), so every target replays the same offsets. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * An fio iolog of 4 KiB writes that touches each chunk of [0, regionBytes) exactly
 * once, in random order, at a random 4 KiB block inside the chunk: every write is a
 * first touch (fio's own random map cannot promise that with blockalign).
 */
export async function writeFirstTouchLog(path: string, regionBytes: number, chunkSize: number, seed: number): Promise<number> {
  const chunks = Math.floor(regionBytes / chunkSize);
  const order = Array.from({ length: chunks }, (_v, i) => i);
  const rand = prng(seed);
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    const a = order[i] ?? 0;
    order[i] = order[j] ?? 0;
    order[j] = a;
  }
  const f = 'target';
  const lines = ['fio version 2 iolog', `${f} add`, `${f} open`];
  const blocksPerChunk = chunkSize / 4096;
  for (const c of order) lines.push(`${f} write ${c * chunkSize + Math.floor(rand() * blocksPerChunk) * 4096} 4096`);
  lines.push(`${f} close`, '');
  await fsp.writeFile(path, lines.join('\n'));
  return chunks;
}

export function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const n = s.length;
  if (n === 0) return NaN;
  const mid = Math.floor(n / 2);
  return n % 2 === 1 ? (s[mid] ?? NaN) : ((s[mid - 1] ?? NaN) + (s[mid] ?? NaN)) / 2;
}
