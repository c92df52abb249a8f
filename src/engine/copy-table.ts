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
 *                  a record with lo < s <= hi          -> read the saved copy
 *                  s > savedThrough[c]                 -> the origin still holds it
 *                  otherwise                           -> the copy was lost (snapshot corrupted),
                                                         or none was made because the snapshot
                                                         owns a private copy (read first, engine)
 *
 * Records live in one growable Uint32Array, four words each (lo, hi, slot, next): 16
 * bytes per saved copy, chained newest first per chunk. A chunk saved as a hole has
 * the slot HOLE_SLOT.
 */
import { PagedU32 } from './paged-u32.js';

/**
 * The slot of a copy that uses no storage: the chunk was wholly a hole on the origin
 * when it would have been copied (origin-holes.ts), so it reads as zeros and uses no
 * difference storage. Never a real slot, never handed to the store (nor to `drop`).
 */
export const HOLE_SLOT = 0xFFFFFFFF;

const WORDS = 4;
const LO = 0;
const HI = 1;
const SLOT = 2;
const NEXT = 3;
const NONE = 0; // record indexes are stored +1 so that 0 means "none"

export class CopyTable {
  private readonly savedThroughByChunk = new PagedU32();
  private readonly headByChunk = new PagedU32();
  private records = new Uint32Array(WORDS * 1024);
  private recordCount = 0;
  private freeRecord = NONE;
  private liveRecords = 0;

  savedThrough(chunk: number): number {
    return this.savedThroughByChunk.get(chunk);
  }

  setSavedThrough(chunk: number, seq: number): void {
    this.savedThroughByChunk.set(chunk, seq);
  }

  /** Record a copy of `chunk` in `slot` that serves snapshots in (lo, hi]. */
  add(chunk: number, lo: number, hi: number, slot: number): void {
    const rec = this.allocRecord();
    const base = rec * WORDS;
    this.records[base + LO] = lo;
    this.records[base + HI] = hi;
    this.records[base + SLOT] = slot;
    this.records[base + NEXT] = this.headByChunk.get(chunk);
    this.headByChunk.set(chunk, rec + 1);
    this.liveRecords++;
  }

  /** The slot holding `chunk` as snapshot `seq` saw it, or -1 if none is saved. */
  lookup(chunk: number, seq: number): number {
    let link = this.headByChunk.get(chunk);
    while (link !== NONE) {
      const base = (link - 1) * WORDS;
      const lo = this.records[base + LO] ?? 0;
      const hi = this.records[base + HI] ?? 0;
      if (lo < seq && seq <= hi) return this.records[base + SLOT] ?? -1;
      link = this.records[base + NEXT] ?? NONE;
    }
    return -1;
  }

  /**
   * Drop every copy that no remaining snapshot needs, handing its slot to `release`.
   * `needed(lo, hi)` says whether any snapshot still alive lies in (lo, hi].
   */
  sweep(needed: (lo: number, hi: number) => boolean, release: (slot: number) => void): void {
    this.headByChunk.forEachNonZero((chunk, head) => {
      let link = head;
      let prevBase = -1;
      while (link !== NONE) {
        const rec = link - 1;
        const base = rec * WORDS;
        const next = this.records[base + NEXT] ?? NONE;
        if (needed(this.records[base + LO] ?? 0, this.records[base + HI] ?? 0)) {
          prevBase = base;
        } else {
          release(this.records[base + SLOT] ?? 0);
          if (prevBase < 0) this.headByChunk.set(chunk, next);
          else this.records[prevBase + NEXT] = next;
          this.freeRecordAt(rec);
        }
        link = next;
      }
    });
  }

  get savedCopies(): number {
    return this.liveRecords;
  }

  private allocRecord(): number {
    if (this.freeRecord !== NONE) {
      const rec = this.freeRecord - 1;
      this.freeRecord = this.records[rec * WORDS + NEXT] ?? NONE;
      return rec;
    }
    if ((this.recordCount + 1) * WORDS > this.records.length) {
      const grown = new Uint32Array(this.records.length * 2);
      grown.set(this.records);
      this.records = grown;
    }
    return this.recordCount++;
  }

  private freeRecordAt(rec: number): void {
    this.records[rec * WORDS + NEXT] = this.freeRecord;
    this.freeRecord = rec + 1;
    this.liveRecords--;
  }
}
