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

/**
 * Heap and ArrayBuffer bytes in use after full collections. The heap's figure moves by a
 * few hundred KiB from one collection to the next (the readings allocate too), so the
 * lowest of ten is taken; ArrayBuffer memory (the table's arrays) is freed on a
 * background thread after a collection, so its last reading is taken, after a pause.
 */
async function retained(): Promise<number> {
  const gc = (globalThis as Gc).gc;
  if (gc === undefined) throw new Error('run with --expose-gc');
  let heap = Infinity;
  let buffers = 0;
  for (let i = 0; i < 10; i++) {
    gc();
    gc();
    await new Promise((resolve) => setTimeout(resolve, 20));
    const m = process.memoryUsage();
    heap = Math.min(heap, m.heapUsed);
    buffers = m.arrayBuffers;
  }
  return heap + buffers;
}

const chunks = Number(process.argv[2] ?? 262144);
const pattern = process.argv[3] ?? 'dense';
const space = Number(process.argv[4] ?? 2 ** 21);
/** The chunk numbers to record, in order (drawn before measuring, kept alive across both). */
function drawChunks(): Float64Array {
  const order = new Float64Array(chunks);
  const rand = prng(7);
  const seen = new Set<number>();
  for (let i = 0; i < chunks; i++) {
    let c = i;
    if (pattern === 'scattered') {
      do c = Math.floor(rand() * space); while (seen.has(c));
      seen.add(c);
    }
    order[i] = c;
  }
  return order;
}

/**
 * The table's code compiled before the first measurement (V8 counts compiled code in its
 * heap). In a function of its own: a suspended top-level await would keep its locals.
 */
function warmUp(): void {
  const warm = new CopyTable();
  for (let i = 0; i < 50000; i++) warm.record((i * 7919) % 1000003, 1, i);
  for (let i = 0; i < 1000; i++) warm.lookup(i, 1);
}

const order = drawChunks();
warmUp();
const before = await retained();
const table = new CopyTable();
for (let i = 0; i < chunks; i++) table.record(order[i] ?? 0, 1, i);
const after = await retained();
if (order.length !== chunks) throw new Error('the chunk numbers were collected');
if (table.savedCopies !== chunks || table.chunkCount !== chunks) throw new Error(`the probe built ${table.savedCopies} copies of ${table.chunkCount} chunks, not ${chunks}`);
process.stdout.write(`${JSON.stringify({ chunks, pattern, space, bytes: after - before, perChunk: (after - before) / chunks, saved: table.savedCopies })}\n`);
