/**
 * The copy table (src/engine/copy-table.ts) against a plain model: records, lookups and
 * sweeps over dense, scattered and huge chunk numbers, with snapshots released in random
 * order, including the hash growing and shrinking. No files: the table is pure memory.
 */
import test from 'ava';
import { CopyTable, HOLE_SLOT, LOST_SLOT } from '../src/engine/copy-table.js';
import { seededFloats } from './helpers/seeded-random.js';


interface ModelRecord {
  lo: number;
  hi: number;
  slot: number;
}

/** What a live snapshot must find: per chunk, the record whose (lo, hi] holds it. */
class Model {
  readonly chunks = new Map<number, ModelRecord[]>();

  savedThrough(chunk: number): number {
    const list = this.chunks.get(chunk);
    return list === undefined || list.length === 0 ? 0 : (list[list.length - 1]?.hi ?? 0);
  }

  record(chunk: number, hi: number, slot: number): void {
    const list = this.chunks.get(chunk) ?? [];
    list.push({ lo: this.savedThrough(chunk), hi, slot });
    this.chunks.set(chunk, list);
  }

  lookup(chunk: number, seq: number): number {
    for (const r of this.chunks.get(chunk) ?? []) if (r.lo < seq && seq <= r.hi) return r.slot;
    return -1;
  }
}

for (const [name, space, seed] of [
  ['dense chunk numbers', 64, 1],
  ['scattered over 2^21 chunks', 2 ** 21, 2],
  ['scattered up to the largest chunk number', 0xffffffff, 3],
] as const) {
  test(`records, lookups and sweeps agree with the model: ${name}`, (t) => {
    const rand = seededFloats(seed);
    const table = new CopyTable();
    const model = new Model();
    const pick = (): number => (space <= 64 ? Math.floor(rand() * space) : rand() < 0.1 ? space - 1 - Math.floor(rand() * 4) : Math.floor(rand() * space));
    const live = new Set<number>();
    let seq = 0;
    let nextSlot = 0;
    const released = new Set<number>();
    for (let round = 0; round < 40; round++) {
      live.add(++seq); // a take
      const newest = seq;
      // Writes: each chunk touched saves one copy for (savedThrough, newest], or a lost record.
      for (let i = 0; i < 300; i++) {
        const chunk = pick();
        if (table.savedThrough(chunk) >= newest) continue;
        const kind = rand();
        const slot = kind < 0.05 ? LOST_SLOT : kind < 0.1 ? HOLE_SLOT : nextSlot++;
        table.record(chunk, newest, slot);
        model.record(chunk, newest, slot);
      }
      // Releases in random order, then a sweep.
      for (const s of [...live]) if (s !== newest && rand() < 0.3) live.delete(s);
      const needed = (lo: number, hi: number): boolean => [...live].some((s) => lo < s && s <= hi);
      const freed: number[] = [];
      table.sweep(needed, (slot) => freed.push(slot));
      for (const slot of freed) {
        if (slot >= LOST_SLOT) t.fail(`slot ${slot} handed back, but it is no storage`);
        t.false(released.has(slot), `slot ${slot} released once`);
        released.add(slot);
      }
      // Every live snapshot finds what the model says, for every chunk the model knows,
      // and a write for the newest snapshot needs a copy exactly when the model says so.
      const wrong: string[] = [];
      for (const [chunk] of model.chunks) {
        for (const s of live) {
          const expected = model.lookup(chunk, s);
          const got = table.lookup(chunk, s);
          if (got !== expected) wrong.push(`chunk ${chunk}, snapshot ${s}: ${got}, expected ${expected}`);
        }
        if ((table.savedThrough(chunk) < newest) !== (model.savedThrough(chunk) < newest)) wrong.push(`chunk ${chunk}: savedThrough ${table.savedThrough(chunk)}`);
      }
      t.deepEqual(wrong.slice(0, 5), [], `round ${round}`);
    }
    // Every slot freed is one no live snapshot can reach; every slot kept is reachable.
    const reachable = new Set<number>();
    for (const [chunk] of model.chunks) for (const s of live) reachable.add(model.lookup(chunk, s));
    for (const slot of released) t.false(reachable.has(slot), `freed slot ${slot} is not reachable`);
    const records = [...model.chunks.values()].flat();
    const stored = records.filter((r) => r.slot !== LOST_SLOT && r.slot !== HOLE_SLOT && !released.has(r.slot)).length;
    const holes = records.filter((r) => r.slot === HOLE_SLOT && [...live].some((s) => r.lo < s && s <= r.hi)).length;
    t.is(table.savedHoles, holes, 'savedHoles counts the holes still needed');
    t.is(table.savedCopies, stored + holes, 'savedCopies counts the copies still held, holes included');
  });
}

test('the hash shrinks back when sweeps empty it, and a chunk saved again starts afresh', (t) => {
  const table = new CopyTable();
  for (let c = 0; c < 100000; c++) table.record(c * 7919, 1, c);
  t.is(table.chunkCount, 100000);
  let freed = 0;
  table.sweep(() => false, () => void freed++);
  t.is(freed, 100000);
  t.is(table.chunkCount, 0);
  t.is(table.savedCopies, 0);
  t.is(table.savedThrough(7919), 0, 'nothing left of it');
  t.is(table.lookup(7919, 1), -1);
  table.record(7919, 2, 5);
  t.is(table.lookup(7919, 2), 5);
  t.is(table.lookup(7919, 1), 5, 'the range reaches down to 0 again (snapshot 1 is gone)');
});

test('removing chunks from a crowded hash keeps every other chunk findable', (t) => {
  const rand = seededFloats(4);
  const table = new CopyTable();
  const chunks = new Map<number, number>();
  // 3/4 full before growing: long probe runs, the case backward-shift deletion must get right.
  while (chunks.size < 98304) {
    const chunk = Math.floor(rand() * 2 ** 32 - 1);
    if (chunks.has(chunk)) continue;
    chunks.set(chunk, chunks.size);
    // Odd slots serve snapshot 1 only, even ones 1 and 2.
    table.record(chunk, chunks.size % 2 === 1 ? 1 : 2, chunks.size);
  }
  // Snapshot 1 released: the chunks saved through 1 only go, in one sweep.
  table.sweep((lo, hi) => lo < 2 && 2 <= hi, () => undefined);
  const wrong: string[] = [];
  for (const [chunk, i] of chunks) {
    const slot = i + 1;
    const expected = slot % 2 === 1 ? -1 : slot;
    const got = table.lookup(chunk, 2);
    if (got !== expected) wrong.push(`chunk ${chunk}: ${got}, expected ${expected}`);
  }
  t.deepEqual(wrong.slice(0, 5), []);
  t.is(table.chunkCount, 98304 / 2);
});

test('a chunk recorded again at or below what it is saved through is a bug, refused', (t) => {
  const table = new CopyTable();
  table.record(3, 5, 1);
  t.throws(() => table.record(3, 5, 2), { message: /already saved through 5/ });
  t.throws(() => table.record(3, 4, 2), { message: /already saved through 5/ });
  t.is(table.lookup(3, 5), 1);
});
