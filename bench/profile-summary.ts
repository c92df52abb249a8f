/**
 * Where the daemon's time goes, from a V8 CPU profile (`node --cpu-prof`, which the
 * bench passes to the daemon with `--profile DIR`):
 *
 *     node dist/bench/profile-summary.js DIR/CPU.*.cpuprofile [--top 25]
 *
 * Prints self time by category (idle = the event loop waiting: for the kernel, the
 * disk or the thread pool; program = native code outside JS, such as the FUSE bindings
 * and libuv; garbage collector; node internals; blksnapfs; dependencies) and the
 * functions with the most self time.
 */
import { readFileSync } from 'node:fs';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

function category(f: CallFrame): string {
  if (f.functionName === '(idle)') return 'idle (event loop waiting)';
  if (f.functionName === '(program)') return 'program (native: libuv, FUSE binding, V8)';
  if (f.functionName === '(garbage collector)') return 'garbage collector';
  if (f.url.includes('/dist/src/')) return `blksnapfs ${f.url.replace(/^.*\/dist\/src\//, '').split('/')[0] ?? ''}`;
  if (f.url.includes('node_modules/fuse-native')) return 'fuse-native (JS side)';
  if (f.url.includes('node_modules/')) return 'other dependencies';
  if (f.url.startsWith('node:') || f.url === '') return 'node internals';
  return 'other';
}

const args = process.argv.slice(2);
const topIndex = args.indexOf('--top');
const top = topIndex >= 0 ? Number(args[topIndex + 1] ?? 25) : 25;
const files = args.filter((a, i) => !a.startsWith('--') && (topIndex < 0 || i !== topIndex + 1));
if (files.length === 0) {
  process.stderr.write('usage: node dist/bench/profile-summary.js FILE.cpuprofile... [--top N]\n');
  process.exit(1);
}

for (const file of files) {
  const p = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  p.samples.forEach((id, i) => selfUs.set(id, (selfUs.get(id) ?? 0) + (p.timeDeltas[i] ?? 0)));
  const total = p.endTime - p.startTime;
  const cats = new Map<string, number>();
  const fns = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const f = byId.get(id)?.callFrame;
    if (f === undefined) continue;
    const c = category(f);
    cats.set(c, (cats.get(c) ?? 0) + us);
    const key = `${f.functionName || '(anonymous)'}  ${f.url.replace(/^.*\/(dist|node_modules)\//, '$1/')}:${f.lineNumber + 1}`;
    fns.set(key, (fns.get(key) ?? 0) + us);
  }
  const pct = (us: number): string => `${((us / total) * 100).toFixed(1).padStart(5)}%`;
  process.stdout.write(`\n${file}: ${(total / 1e6).toFixed(1)} s profiled\n\nby category (self time):\n`);
  for (const [c, us] of [...cats].sort((a, b) => b[1] - a[1])) process.stdout.write(`  ${pct(us)}  ${c}\n`);
  process.stdout.write(`\ntop ${top} functions (self time):\n`);
  for (const [k, us] of [...fns].sort((a, b) => b[1] - a[1]).slice(0, top)) process.stdout.write(`  ${pct(us)}  ${k}\n`);
}
