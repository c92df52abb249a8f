/**
 * The results as people read them: one markdown table per section (raw file,
 * blksnapfs and qemu-storage-daemon side by side, median of the runs with their
 * spread), then the targets as ratios taken within this one run, with pass or fail.
 */
import type { Cell, Recorder, Row, System } from './results.js';
import { MiB } from './tools.js';

export interface Target {
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

export function renderTables(rec: Recorder): string {
  const notes: string[] = [];
  const out: string[] = [];
  const sections = [...new Set(rec.rows.map((r) => r.section))];
  for (const section of sections) {
    out.push(`### ${section}`, '', '| workload | tool | state | unit | raw file | blksnapfs | qsd | blksnapfs/qsd |', '| --- | --- | --- | --- | ---: | ---: | ---: | ---: |');
    for (const r of rec.rows.filter((x) => x.section === section)) {
      const facts = Object.entries(r.facts).map(([k, v]) => `${k}=${v}`).join(' ');
      out.push(`| ${r.workload} | ${r.tool} | ${r.state}${facts === '' ? '' : ` (${facts})`} | ${r.unit} | ${fmtCell(r.cells.raw, r.unit, notes)} | ${fmtCell(r.cells.blksnapfs, r.unit, notes)} | ${fmtCell(r.cells.qsd, r.unit, notes)} | ${ratio(r, 'blksnapfs', 'qsd')} |`);
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

/** Ratio a/b of two medians, with its pass/fail against `min`. */
function ratioTarget(rec: Recorder, name: string, a: [string, System], b: [string, System], min: number): Target {
  const x = rec.get(...a);
  const y = rec.get(...b);
  const goal = `>= ${min.toFixed(1)}x`;
  if (x === null || y === null || y === 0) {
    const why = [a, b].map(([id, s]) => rec.getRow(id)?.cells[s]?.na).find((n) => n !== undefined && n !== null);
    return { name, measured: 'n/a', goal, pass: null, note: why ?? 'not measured in this run' };
  }
  const r = x / y;
  return { name, measured: `${r.toFixed(2)}x (${x.toFixed(0)} / ${y.toFixed(0)})`, goal, pass: r >= min, note: '' };
}

export function evaluateTargets(rec: Recorder, opts: { bigOrigin: string; smallOrigin: string; flatToleranceMiB: number }): Target[] {
  const t: Target[] = [];
  for (const tool of ['dd', 'fio']) {
    t.push(ratioTarget(rec, `origin seq write, no snapshot (${tool}): blksnapfs / qsd`, [`sw.${tool}.nosnap`, 'blksnapfs'], [`sw.${tool}.nosnap`, 'qsd'], 1.0));
  }
  for (const tool of ['dd', 'fio']) {
    t.push(ratioTarget(rec, `first write under snapshot (${tool}): blksnapfs / qsd`, [`sw.${tool}.first`, 'blksnapfs'], [`sw.${tool}.first`, 'qsd'], 1.2));
  }
  for (const tool of ['dd', 'fio']) {
    t.push(ratioTarget(rec, `overwrite of saved chunks (${tool}): vs blksnapfs without snapshot`, [`sw.${tool}.over`, 'blksnapfs'], [`sw.${tool}.nosnap`, 'blksnapfs'], 0.9));
  }
  for (const tool of ['dd', 'fio']) {
    t.push(ratioTarget(rec, `image seq read (${tool}): blksnapfs / qsd`, [`sr.${tool}.image`, 'blksnapfs'], [`sr.${tool}.image`, 'qsd'], 1.0));
    t.push(ratioTarget(rec, `image seq read (${tool}): blksnapfs / raw file`, [`sr.${tool}.image`, 'blksnapfs'], [`sr.${tool}.origin`, 'raw'], 0.6));
  }
  t.push(ratioTarget(rec, '4K randwrite qd16 under snapshot, first touch: blksnapfs / qsd', ['rw.qd16.first', 'blksnapfs'], ['rw.qd16.first', 'qsd'], 1.0));
  t.push(ratioTarget(rec, '4K randwrite qd16 under snapshot, steady state: blksnapfs / qsd', ['rw.qd16.steady', 'blksnapfs'], ['rw.qd16.steady', 'qsd'], 1.0));

  const take = rec.get(`take.${opts.bigOrigin}`, 'blksnapfs');
  t.push(take === null
    ? { name: `snapshot take at ${opts.bigOrigin}`, measured: 'n/a', goal: '< 10 ms', pass: null, note: 'not measured in this run' }
    : { name: `snapshot take at ${opts.bigOrigin}`, measured: `${take.toFixed(2)} ms`, goal: '< 10 ms', pass: take < 10, note: '' });

  const perChunk = rec.get('mem.per-chunk', 'blksnapfs');
  t.push(perChunk === null
    ? { name: 'memory per saved chunk (VmHWM)', measured: 'n/a', goal: '<= 16 B', pass: null, note: 'not measured in this run' }
    : { name: 'memory per saved chunk (VmHWM)', measured: `${perChunk.toFixed(1)} B`, goal: '<= 16 B', pass: perChunk <= 16, note: `peak RSS difference with and without a snapshot, over ${rec.getRow('mem.per-chunk')?.facts['saved_chunks'] ?? '?'} chunks` });
  for (const [i, what] of ['dense', 'scattered, default geometry', 'scattered, 16 TiB at 64K chunks'].entries()) {
    const v = rec.get(`mem.retained.${i}`, 'blksnapfs');
    const name = `memory per saved chunk (retained after GC, ${what})`;
    t.push(v === null
      ? { name, measured: 'n/a', goal: '<= 16 B', pass: null, note: 'not measured in this run' }
      : { name, measured: `${v.toFixed(1)} B`, goal: '<= 16 B', pass: v <= 16, note: '' });
  }

  for (const state of ['idle', 'snap'] as const) {
    const big = rec.getRow(`mem.origin.${state}.${opts.bigOrigin}`);
    const small = rec.getRow(`mem.origin.${state}.${opts.smallOrigin}`);
    const hb = big?.cells.blksnapfs?.median;
    const hs = small?.cells.blksnapfs?.median;
    const name = `memory flat in origin size (${opts.smallOrigin} -> ${opts.bigOrigin}, ${state === 'idle' ? 'no snapshot' : 'one snapshot'})`;
    const goal = `excess <= ${opts.flatToleranceMiB} MiB`;
    if (big === undefined || small === undefined || hb === undefined || hs === undefined || hb === null || hs === null) {
      t.push({ name, measured: 'n/a', goal, pass: null, note: 'not measured in this run' });
      continue;
    }
    const blocks = Number(big.facts['block_count'] ?? 0) - Number(small.facts['block_count'] ?? 0);
    // The active map costs 1 B per block; each snapshot freezes its own copy (its cbtmap).
    const maps = state === 'idle' ? 1 : 2;
    const allowance = (blocks * maps) / MiB;
    const excess = hb - hs - allowance;
    t.push({
      name, goal,
      measured: `${excess.toFixed(1)} MiB excess (${(hb - hs).toFixed(1)} MiB growth - ${allowance.toFixed(1)} MiB for ${maps} B x ${blocks} more blocks)`,
      pass: excess <= opts.flatToleranceMiB,
      note: state === 'snap' ? 'a snapshot keeps a frozen copy of the map: 1 B per block per snapshot on top' : '',
    });
  }
  t.push(ratioTarget(rec, 'first write with 8 snapshots held vs 1', ['multi.8', 'blksnapfs'], ['multi.1', 'blksnapfs'], 0.9));
  return t;
}

export function renderTargets(targets: readonly Target[]): string {
  const out = ['### Targets (ratios within this run)', '', '| target | measured | goal | result |', '| --- | --- | --- | --- |'];
  for (const t of targets) {
    const result = t.pass === null ? 'n/a' : t.pass ? 'PASS' : '**FAIL**';
    out.push(`| ${t.name} | ${t.measured}${t.note === '' ? '' : ` — ${t.note}`} | ${t.goal} | ${result} |`);
  }
  const counted = targets.filter((t) => t.pass !== null);
  out.push('', `${counted.filter((t) => t.pass === true).length} of ${counted.length} measured targets pass.`, '');
  return out.join('\n');
}
