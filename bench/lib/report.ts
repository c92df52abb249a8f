/**
 * The results as people read them: one markdown table per section (raw file,
 * blksnapfs and qemu-storage-daemon side by side, median of the runs with their
 * spread), then the targets as ratios taken within this one run, with pass or fail.
 */
import { BSF_SYSTEMS, systemLabel, type Cell, type DaemonSample, type Recorder, type Row, type System } from './results.js';
import { promises as fsp } from 'node:fs';
import { median, MiB } from './tools.js';

export interface Target {
  /**
   * 'runs': copy runs' (issue 17); 'fastpath': the native fast path's (issue 14);
   * 'transport': the libfuse 3 transport's (issue 8); 'sparse': thin images (issue 16);
   * 'earlier': the ones before.
   */
  group: 'runs' | 'fastpath' | 'transport' | 'sparse' | 'earlier';
  name: string;
  measured: string;
  goal: string;
  pass: boolean | null;
  note: string;
}

function fmtNumber(v: number, unit: string): string {
  if (!Number.isFinite(v)) return '?';
  if (unit === 'ms') return v < 10 ? v.toFixed(2) : v.toFixed(1);
  if (unit === 'B') return v.toFixed(1);
  if (unit === 'MiB') return v.toFixed(1);
  return v >= 100 ? v.toFixed(0) : v.toFixed(1);
}

function fmtCell(c: Cell | undefined, unit: string, notes: string[]): string {
  if (c === undefined) return '';
  if (c.runs.length === 0 || c.median === null) {
    if (c.na === null) return '';
    let i = notes.indexOf(c.na);
    if (i < 0) i = notes.push(c.na) - 1;
    return `n/a[${i + 1}]`;
  }
  const min = Math.min(...c.runs);
  const max = Math.max(...c.runs);
  const spread = c.median === 0 ? 0 : ((max - min) / 2 / Math.abs(c.median)) * 100;
  return `${fmtNumber(c.median, unit)} ±${spread.toFixed(0)}%`;
}

function ratio(row: Row, a: System, b: System): string {
  const x = row.cells[a]?.median;
  const y = row.cells[b]?.median;
  if (x === undefined || y === undefined || x === null || y === null || y === 0) return '';
  return `${(x / y).toFixed(2)}x`;
}

const COLUMNS: readonly System[] = ['raw', 'blksnapfs', 'blksnapfs-off', 'blksnapfs-fn', 'qsd'];

export function renderTables(rec: Recorder): string {
  const notes: string[] = [];
  const out: string[] = [];
  const sections = [...new Set(rec.rows.map((r) => r.section))];
  const head = `| workload | tool | state | unit | ${COLUMNS.map(systemLabel).join(' | ')} | blksnapfs/qsd | blksnapfs/raw | fast path on/off | blksnapfs/fuse-native |`;
  for (const section of sections) {
    out.push(`### ${section}`, '', head, `| --- | --- | --- | --- |${' ---: |'.repeat(COLUMNS.length + 4)}`);
    for (const r of rec.rows.filter((x) => x.section === section)) {
      const facts = Object.entries(r.facts).map(([k, v]) => `${k}=${v}`).join(' ');
      const cells = COLUMNS.map((s) => fmtCell(r.cells[s], r.unit, notes)).join(' | ');
      out.push(`| ${r.workload} | ${r.tool} | ${r.state}${facts === '' ? '' : ` (${facts})`} | ${r.unit} | ${cells} | ${ratio(r, 'blksnapfs', 'qsd')} | ${ratio(r, 'blksnapfs', 'raw')} | ${ratio(r, 'blksnapfs', 'blksnapfs-off')} | ${ratio(r, 'blksnapfs', 'blksnapfs-fn')} |`);
    }
    out.push('');
  }
  if (notes.length > 0) {
    out.push('n/a reasons:', '');
    notes.forEach((n, i) => out.push(`${i + 1}. ${n}`));
    out.push('');
  }
  return out.join('\n');
}

function medianOf(samples: readonly DaemonSample[], key: keyof DaemonSample): number {
  return median(samples.map((x) => x[key]));
}

/**
 * What each blksnapfs daemon did during the measurements (median over the runs):
 * requests in flight and CPU per request, per transport. The evidence behind a miss.
 */
export function renderDaemonEvidence(rec: Recorder): string {
  const out = [
    '### The daemon during each measurement (median of the runs)',
    '',
    'Requests in flight: /status polled every 20 ms while the tool ran (the poll itself not counted). Requests: those of the tool (the polls\' own taken off). CPU: the daemon\'s user + system time from /proc/PID/stat over the wall time (100% = one of the 2 CPUs), all threads and the main (JavaScript) thread alone; per request: all threads\' CPU time over the tool\'s requests.',
    '',
    '| workload | tool | state | transport | result | requests | mean in flight | max in flight | daemon CPU | of it JS thread | CPU µs / request |',
    '| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  let any = false;
  for (const r of rec.rows) {
    for (const system of BSF_SYSTEMS) {
      const c = r.cells[system];
      const d = c?.daemon;
      if (c === undefined || d === undefined || d.length === 0 || c.median === null) continue;
      any = true;
      out.push(`| ${r.workload} | ${r.tool} | ${r.state} | ${systemLabel(system).replace('blksnapfs', 'libfuse3').replace('libfuse3 fuse-native', 'fuse-native')} | ${fmtNumber(c.median, r.unit)} ${r.unit} | ${medianOf(d, 'requests').toFixed(0)} | ${medianOf(d, 'meanInFlight').toFixed(1)} | ${medianOf(d, 'maxInFlight').toFixed(0)} | ${medianOf(d, 'cpuPercent').toFixed(0)}% | ${medianOf(d, 'jsCpuPercent').toFixed(0)}% | ${medianOf(d, 'cpuUsPerRequest').toFixed(1)} |`);
    }
  }
  out.push('');
  return any ? out.join('\n') : '';
}

/** Ratio a/b of two medians, with its pass/fail against `min`. */
function ratioTarget(rec: Recorder, name: string, a: [string, System], b: [string, System], min: number, group: Target['group'] = 'earlier'): Target {
  const x = rec.get(...a);
  const y = rec.get(...b);
  const goal = `>= ${min.toFixed(1)}x`;
  if (x === null || y === null || y === 0) {
    const why = [a, b].map(([id, s]) => rec.getRow(id)?.cells[s]?.na).find((n) => n !== undefined && n !== null);
    return { group, name, measured: 'n/a', goal, pass: null, note: why ?? 'not measured in this run' };
  }
  const r = x / y;
  return { group, name, measured: `${r.toFixed(2)}x (${x.toFixed(0)} / ${y.toFixed(0)})`, goal, pass: r >= min, note: '' };
}

/** The previous full run (bench/results/latest-full.json as it was before this run). */
export interface PreviousRun {
  file: string;
  commit: string;
  /** The transport its blksnapfs column ran on. */
  transport: string;
  started: string;
  seqBytes: number;
  rows: Row[];
}

/** A median of the daemon's samples of a row (the evidence table's figures), or null. */
function daemonMedian(rec: Recorder, id: string, system: System, key: keyof DaemonSample): number | null {
  const d = rec.getRow(id)?.cells[system]?.daemon;
  return d === undefined || d.length === 0 ? null : medianOf(d, key);
}

/**
 * Rows left out of the fast path's on/off comparison: mem.per-chunk is the difference
 * of two peaks (with a snapshot minus without), and the fast path lowers the one
 * without (its 1 GiB write never enters JavaScript), so the difference grows while
 * both peaks stay put; the two peaks are compared as rows of their own
 * (mem.chunks.ctrl.N, mem.chunks.snap.N).
 */
const NOT_COMPARED_ON_OFF = new Set(['mem.per-chunk']);

/** Units where less is better. */
const LOWER_IS_BETTER = new Set(['ms', 'MiB', 'B']);

/** The native fast path's targets (issue 14), ratios within this run. */
function fastPathTargets(rec: Recorder, bigOrigin: string): Target[] {
  const g = 'fastpath' as const;
  const t: Target[] = [
    ratioTarget(rec, '4K randwrite qd1, no snapshot: blksnapfs / qsd', ['rw.qd1.nosnap', 'blksnapfs'], ['rw.qd1.nosnap', 'qsd'], 2.0, g),
    ratioTarget(rec, '4K randwrite qd1, no snapshot: blksnapfs / raw file', ['rw.qd1.nosnap', 'blksnapfs'], ['rw.qd1.nosnap', 'raw'], 1.0, g),
    ratioTarget(rec, '4K randwrite qd16, no snapshot: blksnapfs / qsd', ['rw.qd16.nosnap', 'blksnapfs'], ['rw.qd16.nosnap', 'qsd'], 1.8, g),
    ratioTarget(rec, '4K randwrite qd16, no snapshot: blksnapfs / raw file', ['rw.qd16.nosnap', 'blksnapfs'], ['rw.qd16.nosnap', 'raw'], 1.0, g),
    ratioTarget(rec, '4K randwrite qd1, steady state under a snapshot / no snapshot', ['rw.qd1.steady', 'blksnapfs'], ['rw.qd1.nosnap', 'blksnapfs'], 0.9, g),
    ratioTarget(rec, '4K randwrite qd16, steady state under a snapshot / no snapshot', ['rw.qd16.steady', 'blksnapfs'], ['rw.qd16.nosnap', 'blksnapfs'], 0.9, g),
    ratioTarget(rec, '4K randread qd1: blksnapfs / qsd', ['rr.qd1.nosnap', 'blksnapfs'], ['rr.qd1.nosnap', 'qsd'], 2.0, g),
    ratioTarget(rec, '4K randread qd16: blksnapfs / qsd', ['rr.qd16.nosnap', 'blksnapfs'], ['rr.qd16.nosnap', 'qsd'], 2.0, g),
    ratioTarget(rec, '4K randrw 70/30 qd16: blksnapfs / qsd', ['mix.qd16.nosnap', 'blksnapfs'], ['mix.qd16.nosnap', 'qsd'], 1.8, g),
    ratioTarget(rec, '4K randwrite, 16 jobs psync: blksnapfs / qsd', ['psync16.nosnap', 'blksnapfs'], ['psync16.nosnap', 'qsd'], 1.8, g),
  ];
  const cpu = daemonMedian(rec, 'rw.qd16.nosnap', 'blksnapfs', 'cpuUsPerRequest');
  t.push(cpu === null
    ? { group: g, name: 'daemon CPU per 4 KiB request (randwrite qd16, no snapshot)', measured: 'n/a', goal: '<= 12 µs', pass: null, note: 'not measured in this run' }
    : { group: g, name: 'daemon CPU per 4 KiB request (randwrite qd16, no snapshot)', measured: `${cpu.toFixed(1)} µs`, goal: '<= 12 µs', pass: cpu <= 12, note: 'all threads\' CPU over the tool\'s requests; the C passthrough bound is 9.6 µs' });
  // No row slower than the engine's own path beyond the noise: slower by more than 10%
  // (ratio of medians), and every run of it worse than every run of fast_path=off.
  const compared: Array<{ label: string; r: number; beyondNoise: boolean }> = [];
  for (const row of rec.rows) {
    if (NOT_COMPARED_ON_OFF.has(row.id)) continue;
    const on = row.cells.blksnapfs;
    const off = row.cells['blksnapfs-off'];
    if (on?.median === undefined || off?.median === undefined || on.median === null || off.median === null || on.median === 0 || off.median === 0) continue;
    const lower = LOWER_IS_BETTER.has(row.unit);
    const r = lower ? off.median / on.median : on.median / off.median;
    const apart = lower ? Math.min(...on.runs) > Math.max(...off.runs) : Math.max(...on.runs) < Math.min(...off.runs);
    compared.push({ label: `${row.workload}, ${row.tool}, ${row.state}`, r, beyondNoise: r < 0.9 && apart });
  }
  const worst = compared.reduce<{ label: string; r: number } | null>((w, c) => (w === null || c.r < w.r ? c : w), null);
  const slower = compared.filter((c) => c.beyondNoise);
  t.push(worst === null
    ? { group: g, name: 'no row slower than fast_path=off beyond the noise', measured: 'n/a', goal: 'none', pass: null, note: 'fast_path=off not measured in this run' }
    : {
        group: g, name: 'no row slower than fast_path=off beyond the noise', goal: 'none',
        measured: slower.length === 0
          ? `none of ${compared.length} rows (worst median ratio ${worst.r.toFixed(2)}x: ${worst.label})`
          : `${slower.length} of ${compared.length}: ${slower.map((c) => `${c.label} ${c.r.toFixed(2)}x`).join('; ')}`,
        pass: slower.length === 0,
        note: `beyond the noise: median ratio < 0.9 and every run worse than every run of fast_path=off; not compared: ${[...NOT_COMPARED_ON_OFF].join(', ')} (a difference of two peaks, each compared on its own)`,
      });
  const take = rec.get(`take.${bigOrigin}`, 'blksnapfs');
  t.push(take === null
    ? { group: g, name: `snapshot take at ${bigOrigin}`, measured: 'n/a', goal: '< 2 ms', pass: null, note: 'not measured in this run' }
    : { group: g, name: `snapshot take at ${bigOrigin}`, measured: `${take.toFixed(2)} ms`, goal: '< 2 ms', pass: take < 2, note: '' });
  return t;
}

/** The dd rows: compared with the previous run, and with fuse-native in this run. */
const DD_ROWS = ['sw.dd.nosnap', 'sw.dd.first', 'sw.dd.over', 'sr.dd.origin', 'sr.dd.image'];

function transportTargets(rec: Recorder, previous: PreviousRun | null, seqBytes: number): Target[] {
  const g = 'transport' as const;
  const t: Target[] = [
    ratioTarget(rec, '4K randwrite O_DIRECT qd16, no snapshot: blksnapfs / qsd', ['rw.qd16.nosnap', 'blksnapfs'], ['rw.qd16.nosnap', 'qsd'], 1.0, g),
    ratioTarget(rec, '4K randwrite O_DIRECT qd16, no snapshot: libfuse3 / fuse-native', ['rw.qd16.nosnap', 'blksnapfs'], ['rw.qd16.nosnap', 'blksnapfs-fn'], 3.0, g),
    ratioTarget(rec, 'fio 1M qd4 write, no snapshot: blksnapfs / qsd', ['sw.fio.nosnap', 'blksnapfs'], ['sw.fio.nosnap', 'qsd'], 1.0, g),
    ratioTarget(rec, 'fio 1M qd4 read, no snapshot: blksnapfs / qsd', ['sr.fio.origin', 'blksnapfs'], ['sr.fio.origin', 'qsd'], 1.0, g),
    ratioTarget(rec, 'first write under a snapshot, fio 1M qd4: blksnapfs / qsd', ['sw.fio.first', 'blksnapfs'], ['sw.fio.first', 'qsd'], 1.2, g),
    ratioTarget(rec, 'first write under a snapshot, 4K qd16 first touch: blksnapfs / qsd', ['rw.qd16.first', 'blksnapfs'], ['rw.qd16.first', 'qsd'], 1.2, g),
    ratioTarget(rec, 'image seq read fio 1M qd4, half the chunks saved: blksnapfs / qsd', ['sr.fio.image', 'blksnapfs'], ['sr.fio.image', 'qsd'], 1.0, g),
    ratioTarget(rec, 'image seq read fio 1M qd4, half the chunks saved: blksnapfs / raw file', ['sr.fio.image', 'blksnapfs'], ['sr.fio.origin', 'raw'], 0.6, g),
  ];
  for (const id of DD_ROWS) {
    const row = rec.getRow(id);
    const label = row === undefined ? id : `dd ${row.workload}, ${row.state}`;
    t.push(ratioTarget(rec, `${label}: libfuse3 / fuse-native (this run)`, [id, 'blksnapfs'], [id, 'blksnapfs-fn'], 1.0, g));
    const name = `${label}: libfuse3 / the previous run's blksnapfs`;
    const now = rec.get(id, 'blksnapfs');
    const before = previous?.rows.find((r) => r.id === id)?.cells.blksnapfs?.median ?? null;
    if (previous === null || now === null || before === null || before === 0) {
      t.push({ group: g, name, measured: 'n/a', goal: '>= 1.0x', pass: null, note: previous === null ? 'no previous run (bench/results/latest-full.json)' : 'not measured in one of the runs' });
      continue;
    }
    const r = now / before;
    const comparable = previous.seqBytes === seqBytes;
    t.push({
      group: g, name, goal: '>= 1.0x',
      measured: `${r.toFixed(2)}x (${now.toFixed(0)} / ${before.toFixed(0)})`,
      pass: comparable ? r >= 1.0 : null,
      note: comparable
        ? `previous: ${previous.file}, blksnapfs ${previous.commit} on ${previous.transport}, ${previous.started}; another day's load`
        : `not judged: the previous run streamed ${previous.seqBytes / MiB} MiB, this one ${seqBytes / MiB} MiB`,
    });
  }
  return t;
}

/** A memory row against an upper bound, in bytes. */
function atMost(rec: Recorder, group: Target['group'], name: string, id: string, max: number, note: string): Target {
  const v = rec.get(id, 'blksnapfs');
  const goal = `<= ${max} B`;
  if (v === null) return { group, name, measured: 'n/a', goal, pass: null, note: rec.getRow(id)?.cells.blksnapfs?.na ?? 'not measured in this run' };
  return { group, name, measured: `${v.toFixed(1)} B`, goal, pass: v <= max, note };
}

/**
 * Issue 17 (copy runs): the first-write, first-touch and image-read ratios against qsd
 * and the raw file, the memory bounds, and the first writes as a fraction of the
 * storage's own O_DIRECT write bandwidth (the physical bound: information, not a goal).
 */
function runsTargets(rec: Recorder, storageBound: string): Target[] {
  const g = 'runs' as const;
  const t: Target[] = [
    ratioTarget(rec, 'first write, fio 1M qd4: blksnapfs / qsd', ['sw.fio.first', 'blksnapfs'], ['sw.fio.first', 'qsd'], 1.5, g),
    ratioTarget(rec, 'first write, dd 1M: blksnapfs / qsd', ['sw.dd.first', 'blksnapfs'], ['sw.dd.first', 'qsd'], 1.5, g),
    ratioTarget(rec, 'first touch 4K qd1: blksnapfs / qsd', ['rw.qd1.first', 'blksnapfs'], ['rw.qd1.first', 'qsd'], 1.2, g),
    ratioTarget(rec, 'first touch 4K qd16: blksnapfs / qsd', ['rw.qd16.first', 'blksnapfs'], ['rw.qd16.first', 'qsd'], 1.5, g),
    ratioTarget(rec, 'image seq read fio 1M qd4, half saved: blksnapfs / qsd', ['sr.fio.image', 'blksnapfs'], ['sr.fio.image', 'qsd'], 1.5, g),
    ratioTarget(rec, 'image seq read fio 1M qd4, half saved: blksnapfs / raw file', ['sr.fio.image', 'blksnapfs'], ['sr.fio.origin', 'raw'], 0.8, g),
    atMost(rec, g, 'retained memory per saved chunk, scattered, default geometry', 'mem.retained.1', 64, 'the copy table after a forced GC (lib/retained-probe.ts)'),
    atMost(rec, g, 'peak RSS per saved chunk (4K chunks)', 'mem.per-chunk', 64, `VmHWM with a snapshot minus without, over ${rec.getRow('mem.per-chunk')?.facts['saved_chunks'] ?? '?'} saved chunks`),
  ];
  for (const [id, what] of [['sw.fio.first', 'fio 1M qd4'], ['sw.dd.first', 'dd 1M']] as const) {
    const x = rec.get(id, 'blksnapfs');
    const y = rec.get(storageBound, 'raw');
    const name = `first write, ${what}: blksnapfs / the storage's O_DIRECT write bound`;
    t.push(x === null || y === null || y === 0
      ? { group: g, name, measured: 'n/a', goal: 'information', pass: null, note: 'not measured in this run' }
      : { group: g, name, measured: `${(x / y).toFixed(2)} (${x.toFixed(0)} / ${y.toFixed(0)} MiB/s)`, goal: 'information', pass: null, note: 'a first write writes each byte twice: into the storage (O_DIRECT, fresh preallocated space) and into the origin' });
  }
  return t;
}

export function evaluateTargets(rec: Recorder, opts: { bigOrigin: string; smallOrigin: string; flatToleranceMiB: number; previous: PreviousRun | null; seqBytes: number; storageBound: string }): Target[] {
  const t: Target[] = [...runsTargets(rec, opts.storageBound), ...fastPathTargets(rec, opts.bigOrigin), ...transportTargets(rec, opts.previous, opts.seqBytes)];
  // The fio rows of these are transport targets above; dd keeps its earlier ones.
  t.push(ratioTarget(rec, 'origin seq write, no snapshot (dd): blksnapfs / qsd', ['sw.dd.nosnap', 'blksnapfs'], ['sw.dd.nosnap', 'qsd'], 1.0));
  t.push(ratioTarget(rec, 'first write under snapshot (dd): blksnapfs / qsd', ['sw.dd.first', 'blksnapfs'], ['sw.dd.first', 'qsd'], 1.2));
  for (const tool of ['dd', 'fio']) {
    t.push(ratioTarget(rec, `overwrite of saved chunks (${tool}): vs blksnapfs without snapshot`, [`sw.${tool}.over`, 'blksnapfs'], [`sw.${tool}.nosnap`, 'blksnapfs'], 0.9));
  }
  t.push(ratioTarget(rec, 'image seq read (dd): blksnapfs / qsd', ['sr.dd.image', 'blksnapfs'], ['sr.dd.image', 'qsd'], 1.0));
  t.push(ratioTarget(rec, 'image seq read (dd): blksnapfs / raw file', ['sr.dd.image', 'blksnapfs'], ['sr.dd.origin', 'raw'], 0.6));
  t.push(ratioTarget(rec, '4K randwrite qd16 under snapshot, first touch: blksnapfs / qsd', ['rw.qd16.first', 'blksnapfs'], ['rw.qd16.first', 'qsd'], 1.0));
  t.push(ratioTarget(rec, '4K randwrite qd16 under snapshot, steady state: blksnapfs / qsd', ['rw.qd16.steady', 'blksnapfs'], ['rw.qd16.steady', 'qsd'], 1.0));

  const take = rec.get(`take.${opts.bigOrigin}`, 'blksnapfs');
  t.push(take === null
    ? { group: 'earlier', name: `snapshot take at ${opts.bigOrigin}`, measured: 'n/a', goal: '< 10 ms', pass: null, note: 'not measured in this run' }
    : { group: 'earlier', name: `snapshot take at ${opts.bigOrigin}`, measured: `${take.toFixed(2)} ms`, goal: '< 10 ms', pass: take < 10, note: '' });

  const perChunk = rec.get('mem.per-chunk', 'blksnapfs');
  t.push(perChunk === null
    ? { group: 'earlier', name: 'memory per saved chunk (VmHWM)', measured: 'n/a', goal: '<= 16 B', pass: null, note: 'not measured in this run' }
    : { group: 'earlier', name: 'memory per saved chunk (VmHWM)', measured: `${perChunk.toFixed(1)} B`, goal: '<= 16 B', pass: perChunk <= 16, note: `peak RSS difference with and without a snapshot, over ${rec.getRow('mem.per-chunk')?.facts['saved_chunks'] ?? '?'} chunks` });
  for (const [i, what] of ['dense', 'scattered, default geometry', 'scattered, 16 TiB at 64K chunks'].entries()) {
    const v = rec.get(`mem.retained.${i}`, 'blksnapfs');
    const name = `memory per saved chunk (retained after GC, ${what})`;
    t.push(v === null
      ? { group: 'earlier', name, measured: 'n/a', goal: '<= 16 B', pass: null, note: 'not measured in this run' }
      : { group: 'earlier', name, measured: `${v.toFixed(1)} B`, goal: '<= 16 B', pass: v <= 16, note: '' });
  }

  for (const state of ['idle', 'snap'] as const) {
    const big = rec.getRow(`mem.origin.${state}.${opts.bigOrigin}`);
    const small = rec.getRow(`mem.origin.${state}.${opts.smallOrigin}`);
    const hb = big?.cells.blksnapfs?.median;
    const hs = small?.cells.blksnapfs?.median;
    const name = `memory flat in origin size (${opts.smallOrigin} -> ${opts.bigOrigin}, ${state === 'idle' ? 'no snapshot' : 'one snapshot'})`;
    const goal = `excess <= ${opts.flatToleranceMiB} MiB`;
    if (big === undefined || small === undefined || hb === undefined || hs === undefined || hb === null || hs === null) {
      t.push({ group: 'earlier', name, measured: 'n/a', goal, pass: null, note: 'not measured in this run' });
      continue;
    }
    const blocks = Number(big.facts['block_count'] ?? 0) - Number(small.facts['block_count'] ?? 0);
    // The active map costs 1 B per block; each snapshot freezes its own copy (its cbtmap).
    const maps = state === 'idle' ? 1 : 2;
    const allowance = (blocks * maps) / MiB;
    const excess = hb - hs - allowance;
    t.push({
      group: 'earlier', name, goal,
      measured: `${excess.toFixed(1)} MiB excess (${(hb - hs).toFixed(1)} MiB growth - ${allowance.toFixed(1)} MiB for ${maps} B x ${blocks} more blocks)`,
      pass: excess <= opts.flatToleranceMiB,
      note: state === 'snap' ? 'a snapshot keeps a frozen copy of the map: 1 B per block per snapshot on top' : '',
    });
  }
  t.push(ratioTarget(rec, 'first write with 8 snapshots held vs 1', ['multi.8', 'blksnapfs'], ['multi.1', 'blksnapfs'], 0.9));
  t.push(...sparseTargets(rec));
  return t;
}

/** Thin images: cp --sparse=always of an image as fast as of the origin file, reading about the data only. */
function sparseTargets(rec: Recorder): Target[] {
  const t = [ratioTarget(rec, 'cp --sparse=always of a thin image: blksnapfs / raw file', ['sparse.cp', 'blksnapfs'], ['sparse.cp', 'raw'], 1.0, 'sparse')];
  const name = 'bytes the daemon read for that cp: at most 2x the data';
  const read = rec.get('sparse.cp.read', 'blksnapfs');
  const dataMiB = Number(rec.getRow('sparse.cp.read')?.facts['data_mib'] ?? NaN);
  t.push(read === null || !Number.isFinite(dataMiB)
    ? { group: 'sparse', name, measured: 'n/a', goal: '<= 2.0x data', pass: null, note: 'not measured in this run' }
    : { group: 'sparse', name, measured: `${(read / dataMiB).toFixed(2)}x (${read.toFixed(1)} MiB of ${dataMiB} MiB data)`, goal: '<= 2.0x data', pass: read <= 2 * dataMiB, note: '' });
  return t;
}

export function renderTargets(targets: readonly Target[]): string {
  const out: string[] = [];
  const groups: Array<[Target['group'], string]> = [
    ['runs', '### Targets of copy runs (issue 17; ratios within this run)'],
    ['fastpath', '### Targets of the native fast path (ratios within this run)'],
    ['transport', '### Targets of the libfuse 3 transport (ratios within this run)'],
    ['sparse', '### Targets of thin images (ratios within this run)'],
    ['earlier', '### Earlier targets (ratios within this run; blksnapfs = the default transport)'],
  ];
  for (const [group, title] of groups) {
    const list = targets.filter((t) => t.group === group);
    if (list.length === 0) continue;
    out.push(title, '', '| target | measured | goal | result |', '| --- | --- | --- | --- |');
    for (const t of list) {
      const result = t.pass === null ? 'n/a' : t.pass ? 'PASS' : '**FAIL**';
      out.push(`| ${t.name} | ${t.measured}${t.note === '' ? '' : ` — ${t.note}`} | ${t.goal} | ${result} |`);
    }
    const counted = list.filter((t) => t.pass !== null);
    out.push('', `${counted.filter((t) => t.pass === true).length} of ${counted.length} measured targets pass.`, '');
  }
  return out.join('\n');
}

/** What a run records about itself (the `meta` of bench/results/*.json), as far as the report needs it. */
export interface RunMeta {
  mode: string;
  started: string;
  reps: number;
  machine: { cpus: number; kernel: string; loadavg_start: number[] };
  versions: { qemu_storage_daemon: string; fio: string; blksnapfs_commit: string };
  loadavg_end: number[];
  systems?: string[];
}

/** The whole markdown report of a run. */
export function renderRun(meta: RunMeta, rec: Recorder, targets: readonly Target[]): string {
  return [
    `## blksnapfs bench, ${meta.mode} run, ${meta.started}`,
    '',
    `${meta.reps} runs per figure (median ±half the range), ${meta.machine.cpus} CPUs, kernel ${meta.machine.kernel}, ${meta.versions.qemu_storage_daemon}, ${meta.versions.fio}, blksnapfs ${meta.versions.blksnapfs_commit} (blksnapfs: transport=libfuse3 with the fast path; blksnapfs fast_path=off: the same, every request through the engine; blksnapfs fuse-native: transport=fuse-native; systems run: ${(meta.systems ?? []).join(', ')}). Load average at start ${meta.machine.loadavg_start.map((x) => x.toFixed(1)).join(' ')}, at end ${meta.loadavg_end.map((x) => x.toFixed(1)).join(' ')}.`,
    '',
    renderTables(rec),
    renderTargets(targets),
    renderDaemonEvidence(rec),
  ].join('\n');
}

/** A saved full run, to judge the dd rows of a later one against (null if there is none). */
export async function loadPreviousRun(file: string): Promise<PreviousRun | null> {
  try {
    const data = JSON.parse(await fsp.readFile(file, 'utf8')) as { meta: { started: string; sizes: { seq: number }; versions: { blksnapfs_commit: string }; transports?: string[]; systems?: string[] }; rows: Row[] };
    // Runs from before the transport was a dimension had blksnapfs on fuse-native.
    const transport = data.meta.transports === undefined && data.meta.systems === undefined ? 'fuse-native' : 'libfuse3';
    return { file: 'bench/results/latest-full.json', commit: data.meta.versions.blksnapfs_commit, transport, started: data.meta.started, seqBytes: data.meta.sizes.seq, rows: data.rows };
  } catch {
    return null;
  }
}
