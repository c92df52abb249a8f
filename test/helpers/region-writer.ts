/**
 * A writer process that owns one region of a file and writes it synchronously, one
 * request at a time (many of them side by side make a queue of synchronous writers):
 *
 *   node region-writer.js PATH BASE LENGTH random BLOCK COUNT SEED
 *       COUNT writes of BLOCK bytes at BLOCK-aligned offsets in [BASE, BASE+LENGTH),
 *       offsets and contents from SEED: the same arguments always leave the same bytes.
 *   node region-writer.js PATH BASE LENGTH records [STOPFILE]
 *       self-describing 4 KiB records in order (record k at BASE + k*4096 names the
 *       region and k), LENGTH/4096 of them, or fewer if STOPFILE appears (looked for
 *       every 64 records): an image taken at any moment must hold a prefix of them and
 *       the original bytes after.
 * It prints the number of writes when done.
 */
import { closeSync, existsSync, openSync, writeSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { seededU32 } from './seeded-random.js';

export const RECORD = 4096;
const MAGIC = 'BLKSNAPFS-REGION';


export function regionRecord(base: number, k: number): Buffer {
  const buf = Buffer.alloc(RECORD, k & 0xff);
  buf.write(MAGIC, 0, 'ascii');
  buf.writeUInt32LE(k, 20);
  buf.writeDoubleLE(base, 24);
  createHash('sha256').update(buf.subarray(0, RECORD - 32)).digest().copy(buf, RECORD - 32);
  return buf;
}

/** How many records of the region starting at `base` `image` holds as a prefix; -1 if what follows is not the original zeros. */
export function recordPrefix(image: Buffer, base: number, count: number): number {
  let k = 0;
  while (k < count && regionRecord(base, k).equals(image.subarray(base + k * RECORD, base + (k + 1) * RECORD))) k++;
  const rest = image.subarray(base + k * RECORD, base + count * RECORD);
  return rest.every((b) => b === 0) ? k : -1;
}

if (process.argv[1]?.endsWith('region-writer.js')) {
  const [path, baseText, lengthText, mode, blockText, countText, seedText] = process.argv.slice(2);
  const base = Number(baseText);
  const length = Number(lengthText);
  const fd = openSync(path ?? '', 'r+');
  let writes = 0;
  if (mode === 'records') {
    const stopFile = blockText;
    for (let k = 0; k < Math.floor(length / RECORD); k++, writes++) {
      if (stopFile !== undefined && k % 64 === 0 && existsSync(stopFile)) break;
      writeSync(fd, regionRecord(base, k), 0, RECORD, base + k * RECORD);
    }
  } else {
    const block = Number(blockText);
    const count = Number(countText);
    const next = seededU32(Number(seedText));
    const slots = Math.floor(length / block);
    const buf = Buffer.alloc(block);
    for (let i = 0; i < count; i++, writes++) {
      const offset = base + (next() % slots) * block;
      for (let j = 0; j < block; j += 4) buf.writeUInt32LE(next(), j);
      writeSync(fd, buf, 0, block, offset);
    }
  }
  closeSync(fd);
  process.stdout.write(`${writes}\n`);
}
