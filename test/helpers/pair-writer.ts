/**
 * A writer for coherent snapshots of two origins: for n = 1, 2, 3, ... it writes the
 * self-describing record n (see seq-writer.ts) at offset 0 of A, waits for that write to
 * return, then writes record n at offset 0 of B and waits again, until killed. So at any
 * moment B's record is A's or one behind it, and a coherent pair of images must show
 * seqB <= seqA <= seqB + 1.
 */
import { openSync, writeSync } from 'node:fs';
import { RECORD, isRecord, makeRecord } from './seq-writer.js';

/** The record number at offset 0 of `head` (its first RECORD bytes), 0 if there is none yet, -1 if torn. */
export function recordNumber(head: Buffer): number {
  if (head.length < RECORD) return -1;
  const k = head.readUInt32LE(16);
  if (isRecord(head.subarray(0, RECORD), k)) return k;
  return head.subarray(0, 13).toString('ascii') === 'BLKSNAPFS-SEQ' ? -1 : 0;
}

// Run as a script: node pair-writer.js PATH_A PATH_B. Prints "started" after the first pair.
if (process.argv[1]?.endsWith('pair-writer.js')) {
  const [a, b] = process.argv.slice(2);
  const fdA = openSync(a ?? '', 'r+');
  const fdB = openSync(b ?? '', 'r+');
  for (let n = 1; ; n++) {
    const rec = makeRecord(n);
    writeSync(fdA, rec, 0, RECORD, 0);
    writeSync(fdB, rec, 0, RECORD, 0);
    if (n === 1) writeSync(1, 'started\n');
  }
}
