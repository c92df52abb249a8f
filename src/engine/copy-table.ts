/**
 * Which saved copy of a chunk serves which snapshot.
 *
 * Snapshots are numbered by a sequence that only grows. When a chunk is first written
 * after one or more snapshots were taken, its old contents are saved once, and that one
 * copy serves every snapshot taken since the chunk was last saved: the snapshots whose
 * sequence lies in (lo, hi], where lo is the chunk's previous `savedThrough` and hi the
 * newest live snapshot. Writes later than that need no copy until a newer snapshot.
 *
 *   chunk state:   savedThrough[c] >= newest live seq  -> writes go straight through
 *                  savedThrough[c] <  newest live seq  -> next write saves a copy first
 *   image read of snapshot s, chunk c:
 *                  s > savedThrough[c]                 -> the origin still holds it
 *                  the record with lo < s <= hi holds  -> a slot: read the saved copy
 *                                                         LOST_SLOT: the copy failed (the
 *                                                         snapshot is corrupted), or none
 *                                                         was made because every snapshot
 *                                                         in (lo, hi] owns a private copy
 *                                                         (read first, engine)
 *
 * Layout, 12 bytes per record and 8 per chunk that has any (scattered or dense alike):
 * - A chunk's records form a chain, newest first, each (hi, slot, next). A record's lo
 *   is the hi of the next older record (0 for the oldest), and `savedThrough` is the
 *   newest record's hi: the records of a chunk tile (0, savedThrough] without gaps, so
 *   nothing else is kept per chunk. A failed copy, or one not needed, is a record too
 *   (LOST_SLOT), which is how savedThrough moves past it.
 * - Records live in fixed pages of RECORD_PAGE records (no doubling, no copy on growth),
 *   recycled through a free list.
 * - The chunk -> newest record map is an open-addressing hash (linear probing, two
 *   Uint32Arrays), grown at 3/4 full and shrunk below 1/8, so a saved chunk costs
 *   12 + 8/load bytes wherever it lies in the origin (16 TiB or 1 GiB alike).
 *
 * Dropping records (sweep) only ever removes records that no live snapshot lies in; the
 * neighbour that inherits the range then covers more, but only sequence numbers of
 * released snapshots, which are never asked about again.
 *
 * Slot values: real slots are below LOST_SLOT. HOLE_SLOT marks a chunk that was wholly a
 * hole on the origin when it would have been copied (origin-holes.ts): it reads as zeros
 * and uses no difference storage; never handed to the store (nor to `release`).
 */

/** A record that holds no copy: the copy failed, or every snapshot it serves owns the chunk privately. */
export const LOST_SLOT = 0xfffffffe;
/**
 * The slot of a copy that uses no storage: the chunk was wholly a hole on the origin
 * when it would have been copied, so it reads as zeros.
 */
export const HOLE_SLOT = 0xffffffff;
/** Slot values at or above this hold no storage. */
export const FIRST_VIRTUAL_SLOT = LOST_SLOT;

const WORDS = 3;
const HI = 0;
const SLOT = 1;
const NEXT = 2;
const RECORD_PAGE_BITS = 12;
const RECORD_PAGE = 1 << RECORD_PAGE_BITS;
const RECORD_MASK = RECORD_PAGE - 1;
const NONE = 0; // record links are stored +1 so that 0 means "none"

/** A hash slot with no chunk. Chunk indexes are below it (geometry.ts caps the chunk count). */
const EMPTY = 0xffffffff;
const MIN_BUCKETS_LOG2 = 6;

export class CopyTable {
  // The hash: keys[i] is a chunk (or EMPTY), heads[i] its newest record (+1).
  private bucketsLog2 = MIN_BUCKETS_LOG2;
  private keys = new Uint32Array(1 << MIN_BUCKETS_LOG2).fill(EMPTY);
  private heads = new Uint32Array(1 << MIN_BUCKETS_LOG2);
  private chunks = 0;
  // The records.
  private readonly pages: Uint32Array[] = [];
  private recordCount = 0;
  private freeRecord = NONE;
  private storedCopies = 0;
  private holeCopies = 0;

  /** The newest snapshot `chunk` is saved through (0: never saved). */
  savedThrough(chunk: number): number {
    const head = this.headOf(chunk);
    return head === NONE ? 0 : this.word(head - 1, HI);
  }

  /**
   * Record that `chunk` is saved through `hi` in `slot` (or LOST_SLOT / HOLE_SLOT),
   * serving the snapshots in (savedThrough(chunk), hi]. `hi` must be above savedThrough.
   */
  record(chunk: number, hi: number, slot: number): void {
    const i = this.find(chunk);
    const head = i < 0 ? NONE : (this.heads[i] ?? NONE);
    if (head !== NONE && this.word(head - 1, HI) >= hi) {
      throw new Error(`bug: chunk ${chunk} recorded through ${hi}, already saved through ${this.word(head - 1, HI)}`);
    }
    const rec = this.allocRecord();
    this.setWord(rec, HI, hi);
    this.setWord(rec, SLOT, slot);
    this.setWord(rec, NEXT, head);
    if (i >= 0) this.heads[i] = rec + 1;
    else this.insert(chunk, rec + 1);
    if (slot < FIRST_VIRTUAL_SLOT) this.storedCopies++;
    else if (slot === HOLE_SLOT) this.holeCopies++;
  }

  /**
   * The slot holding `chunk` as snapshot `seq` saw it (possibly LOST_SLOT or HOLE_SLOT),
   * or -1 when `seq` is past savedThrough (the origin still holds it).
   */
  lookup(chunk: number, seq: number): number {
    let link = this.headOf(chunk);
    if (link === NONE || seq > this.word(link - 1, HI)) return -1;
    for (;;) {
      const next = this.word(link - 1, NEXT);
      const lo = next === NONE ? 0 : this.word(next - 1, HI);
      if (seq > lo) return this.word(link - 1, SLOT);
      link = next;
    }
  }

  /**
   * Drop every record that no remaining snapshot needs, handing its slot (if it holds
   * storage) to `release`. `needed(lo, hi)` says whether any snapshot still alive lies
   * in (lo, hi].
   */
  sweep(needed: (lo: number, hi: number) => boolean, release: (slot: number) => void): void {
    const emptied: number[] = [];
    const { keys, heads } = this;
    for (let i = 0; i < keys.length; i++) {
      const chunk = keys[i] ?? EMPTY;
      if (chunk === EMPTY) continue;
      // Each record is judged on its own range as the chain stood before this sweep.
      let link = heads[i] ?? NONE;
      let keptBefore = -1; // the newer record kept last, whose next may change
      let newHead = NONE;
      while (link !== NONE) {
        const rec = link - 1;
        const next = this.word(rec, NEXT);
        const lo = next === NONE ? 0 : this.word(next - 1, HI);
        if (needed(lo, this.word(rec, HI))) {
          if (keptBefore < 0) newHead = link;
          else this.setWord(keptBefore, NEXT, link);
          keptBefore = rec;
        } else {
          const slot = this.word(rec, SLOT);
          if (slot < FIRST_VIRTUAL_SLOT) {
            this.storedCopies--;
            release(slot);
          } else if (slot === HOLE_SLOT) {
            this.holeCopies--;
          }
          this.freeRecordAt(rec);
        }
        link = next;
      }
      if (keptBefore >= 0) this.setWord(keptBefore, NEXT, NONE);
      heads[i] = newHead;
      if (newHead === NONE) emptied.push(chunk);
    }
    // Removed after the walk: removing moves entries, which would upset the loop above.
    for (const chunk of emptied) this.remove(chunk);
    if (this.bucketsLog2 > MIN_BUCKETS_LOG2 && this.chunks * 8 < this.keys.length) this.rehash(this.fittingLog2(this.chunks));
  }

  /** Saved copies, holes included (not the records of copies that failed or were not needed). */
  get savedCopies(): number {
    return this.storedCopies + this.holeCopies;
  }

  /** Saved copies that are holes (HOLE_SLOT: no storage). */
  get savedHoles(): number {
    return this.holeCopies;
  }

  /** Chunks with any record (for tests and the memory probe). */
  get chunkCount(): number {
    return this.chunks;
  }

  // ---- records ----------------------------------------------------------------

  private word(rec: number, field: number): number {
    return this.pages[rec >>> RECORD_PAGE_BITS]?.[(rec & RECORD_MASK) * WORDS + field] ?? 0;
  }

  private setWord(rec: number, field: number, value: number): void {
    const page = this.pages[rec >>> RECORD_PAGE_BITS];
    if (page === undefined) throw new Error(`bug: record ${rec} has no page`);
    page[(rec & RECORD_MASK) * WORDS + field] = value;
  }

  private allocRecord(): number {
    if (this.freeRecord !== NONE) {
      const rec = this.freeRecord - 1;
      this.freeRecord = this.word(rec, NEXT);
      return rec;
    }
    const rec = this.recordCount++;
    if ((rec & RECORD_MASK) === 0) this.pages.push(new Uint32Array(RECORD_PAGE * WORDS));
    return rec;
  }

  private freeRecordAt(rec: number): void {
    this.setWord(rec, NEXT, this.freeRecord);
    this.freeRecord = rec + 1;
  }

  // ---- the chunk hash -----------------------------------------------------------

  private bucketOf(chunk: number): number {
    // Fibonacci hashing: the top bits of chunk * 2^32/phi.
    return Math.imul(chunk, 0x9e3779b1) >>> (32 - this.bucketsLog2);
  }

  /** Index of `chunk` in the hash, or -1. */
  private find(chunk: number): number {
    const mask = this.keys.length - 1;
    for (let i = this.bucketOf(chunk); ; i = (i + 1) & mask) {
      const key = this.keys[i] ?? EMPTY;
      if (key === chunk) return i;
      if (key === EMPTY) return -1;
    }
  }

  private headOf(chunk: number): number {
    const i = this.find(chunk);
    return i < 0 ? NONE : (this.heads[i] ?? NONE);
  }

  private insert(chunk: number, head: number): void {
    if (chunk >= EMPTY || chunk < 0 || !Number.isInteger(chunk)) throw new Error(`bug: chunk index ${chunk} out of range`);
    if ((this.chunks + 1) * 4 > this.keys.length * 3) this.rehash(this.bucketsLog2 + 1);
    this.place(chunk, head);
    this.chunks++;
  }

  private place(chunk: number, head: number): void {
    const mask = this.keys.length - 1;
    let i = this.bucketOf(chunk);
    while ((this.keys[i] ?? EMPTY) !== EMPTY) i = (i + 1) & mask;
    this.keys[i] = chunk;
    this.heads[i] = head;
  }

  /** Remove `chunk` (backward-shift deletion: no tombstones, probes stay short). */
  private remove(chunk: number): void {
    let hole = this.find(chunk);
    if (hole < 0) return;
    const { keys, heads } = this;
    const mask = keys.length - 1;
    for (let i = (hole + 1) & mask; ; i = (i + 1) & mask) {
      const key = keys[i] ?? EMPTY;
      if (key === EMPTY) break;
      const home = this.bucketOf(key);
      // Move it back into the hole unless its home lies cyclically in (hole, i].
      const stays = hole <= i ? home > hole && home <= i : home > hole || home <= i;
      if (stays) continue;
      keys[hole] = key;
      heads[hole] = heads[i] ?? NONE;
      hole = i;
    }
    keys[hole] = EMPTY;
    heads[hole] = NONE;
    this.chunks--;
  }

  private fittingLog2(entries: number): number {
    let log2 = MIN_BUCKETS_LOG2;
    while (entries * 2 > 1 << log2) log2++;
    return log2;
  }

  private rehash(log2: number): void {
    const oldKeys = this.keys;
    const oldHeads = this.heads;
    this.bucketsLog2 = log2;
    this.keys = new Uint32Array(1 << log2).fill(EMPTY);
    this.heads = new Uint32Array(1 << log2);
    for (let i = 0; i < oldKeys.length; i++) {
      const key = oldKeys[i] ?? EMPTY;
      if (key !== EMPTY) this.place(key, oldHeads[i] ?? NONE);
    }
  }
}
