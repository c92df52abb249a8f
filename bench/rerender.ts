/**
 * Judge and render a saved run again, after the targets or the report changed:
 *
 *   node dist/bench/rerender.js RUN.json [PREVIOUS.json]
 *
 * RUN.json is a result of `npm run bench` (bench/results/latest-*.json); PREVIOUS.json
 * the run its dd rows are compared with (for the committed full run: `git show
 * HEAD~N:bench/results/latest-full.json > /tmp/prev.json`). Rewrites RUN.json's targets
 * and its .md copy, and prints the markdown.
 */
import { promises as fsp } from 'node:fs';
import { evaluateTargets, loadPreviousRun, renderRun, type RunMeta } from './lib/report.js';
import { Recorder, type Row } from './lib/results.js';
import { STORAGE_BOUND } from './phases/sequential.js';

async function main(): Promise<void> {
  const [file, previousFile] = process.argv.slice(2);
  if (file === undefined) throw new Error('usage: node dist/bench/rerender.js RUN.json [PREVIOUS.json]');
  const data = JSON.parse(await fsp.readFile(file, 'utf8')) as { meta: RunMeta & { sizes: { seq: number } }; rows: Row[] };
  const rec = Recorder.fromRows(data.rows);
  const previous = previousFile === undefined ? null : await loadPreviousRun(previousFile);
  const targets = evaluateTargets(rec, { bigOrigin: '16 TiB', smallOrigin: '1 GiB', flatToleranceMiB: 2, previous, seqBytes: data.meta.sizes.seq, storageBound: STORAGE_BOUND });
  const markdown = renderRun(data.meta, rec, targets);
  await fsp.writeFile(file, `${JSON.stringify({ ...data, targets }, null, 2)}\n`);
  await fsp.writeFile(file.replace(/\.json$/, '') + '.md', `${markdown}\n`);
  process.stdout.write(`${markdown}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`rerender: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
