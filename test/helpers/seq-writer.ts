/**
 * A writer process for "each image is a state the origin really had": it writes
 * self-describing 4 KiB records in order (record k at offset k*4096 holds k, a marker
 * and a checksum), through the mount, until killed or done. An image taken at any
 * moment must then hold records 0..j intact and the original bytes after them: a
 * prefix, never a hole or a torn record.
 */
import { openSync, writeSync, closeSync } from 'node:fs';
import { createHash } from 'node:crypto';

export const RECORD = 4096;
const MAGIC = 'BLKSNAPFS-SEQ';

export function makeRecord(k: number): Buffer {
  const buf = Buffer.alloc(RECORD, k & 0xff);
  buf.write(MAGIC, 0, 'ascii');
  buf.writeUInt32LE(k, 16);
  const sum = createHash('sha256').update(buf.subarray(0, RECORD - 32)).digest();
  sum.copy(buf, RECORD - 32);
  return buf;
}

export function isRecord(buf: Buffer, k: number): boolean {
  return buf.length === RECORD && makeRecord(k).equals(buf);
}

// Run as a script: node seq-writer.js PATH COUNT [--ack]
// With --ack it prints each record number once its write has returned (acknowledged).
if (process.argv[1]?.endsWith('seq-writer.js')) {
  const [path, countText, flag] = process.argv.slice(2);
  const fd = openSync(path ?? '', 'r+');
  const count = Number(countText);
  for (let k = 0; k < count; k++) {
    writeSync(fd, makeRecord(k), 0, RECORD, k * RECORD);
    if (flag === '--ack') writeSync(1, `${k}\n`);
  }
  closeSync(fd);
}
