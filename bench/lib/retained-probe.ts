/**
 * Retained memory of the engine's per-chunk bookkeeping, measured exactly: build a
 * CopyTable the way copy-on-write fills it (one record per saved chunk, which is also
 * its savedThrough), force a full GC before and after, and divide. The table is all the
 * engine keeps per saved chunk: runs in flight and origin readers are transient, and
 * the image reads' caches are bounded by their own size, not by chunks. Run as a child
 * with --expose-gc:
 *
 *     node --expose-gc dist/bench/lib/retained-probe.js CHUNKS PATTERN CHUNK_SPACE
 *
 * PATTERN is "dense" (chunks 0..CHUNKS-1, a sequential write) or "scattered" (CHUNKS
 * random chunks out of CHUNK_SPACE). Prints one JSON line. Peak RSS (VmHWM) of the
 * daemon says the same thing plus garbage-collector slack; this says what is kept.
 */
import { CopyTable } from '../../src/engine/copy-table.js';
import { prng } from './tools.js';

interface Gc {
  gc?: () => void;
}

function retained(): number {
  const gc = (globalThis as Gc).gc;
  if (gc === undefined) throw new Error('run with --expose-gc');
  gc();
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

const chunks = Number(process.argv[2] ?? 262144);
const pattern = process.argv[3] ?? 'dense';
const space = Number(process.argv[4] ?? 2 ** 21);
const before = retained();
const table = new CopyTable();
const rand = prng(7);
const seen = new Set<number>();
for (let i = 0; i < chunks; i++) {
  let c = i;
  if (pattern === 'scattered') {
    do c = Math.floor(rand() * space); while (seen.has(c));
    seen.add(c);
  }
  table.record(c, 1, i);
}
seen.clear();
const after = retained();
if (table.savedCopies !== chunks || table.chunkCount !== chunks) throw new Error(`the probe built ${table.savedCopies} copies of ${table.chunkCount} chunks, not ${chunks}`);
process.stdout.write(`${JSON.stringify({ chunks, pattern, space, bytes: after - before, perChunk: (after - before) / chunks, saved: table.savedCopies })}\n`);
