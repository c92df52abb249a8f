/**
 * What this daemon has written to the origin, so that a watch for writes made outside
 * the mount (daemon/outside-write-watch.ts) can tell the origin's own writers apart:
 * fanotify names a writer process, but an image file's time stamps and a block device's
 * sector counters name nobody, and only "we made no write in between" or "more sectors
 * than all our writes could account for" turns them into proof.
 *
 * Every path that writes the origin feeds one tally: the engine's JavaScript write path
 * (engine.ts `writeOrigin`) through `OriginWriteCounter`, and any other writer of the
 * origin in this process (a native fast path) through an `OriginWriteAccounting` of its
 * own, summed with `sumOfAccountings`. A write the tally does not see would read as a
 * write from outside: change tracking would restart and live snapshots would be marked
 * corrupted.
 *
 * The contract of a tally (what the watch relies on):
 * - `begun` counts writes (and fallocate ranges) that were started; it is incremented,
 *   and `pages`/`discardPages` added, BEFORE the system call is made;
 * - `ended` counts the same writes once their system call returned (success or not);
 * - all four only grow; `ended <= begun` at every instant;
 * - `tally()` reads `ended` BEFORE `begun` (a C side: acquire loads in that order, paired
 *   with release stores after each increment), so `ended === begun` in one reading
 *   proves that no write was in flight at the moment `ended` was read, and none began
 *   until `begun` was read.
 * - `pages`: for each write of [position, position + length), the 4 KiB pages it touches
 *   (`pagesTouched`): a block device writes back at most that many pages for it, 8
 *   sectors each; so all our writes together move the device's written-sectors counter by
 *   at most 8 * pages. `discardPages` the same for discards and zeroing (fallocate
 *   PUNCH_HOLE / ZERO_RANGE of a block device: counted as discard or as write sectors);
 *   a discard is also counted in `pages`.
 */

export interface OriginWriteTally {
  begun: number;
  ended: number;
  pages: number;
  discardPages: number;
}

export interface OriginWriteAccounting {
  /** One reading, `ended` taken before `begun` (see the header). */
  tally(): OriginWriteTally;
}

const PAGE = 4096;

/** The 4 KiB pages [position, position + length) touches (0 for an empty range). */
export function pagesTouched(position: number, length: number): number {
  if (length <= 0) return 0;
  return Math.floor((position + length - 1) / PAGE) - Math.floor(position / PAGE) + 1;
}

/** The JavaScript writers' tally: `begin` before the system call, `end` after it returned. */
export class OriginWriteCounter implements OriginWriteAccounting {
  private begunCount = 0;
  private endedCount = 0;
  private pageCount = 0;
  private discardPageCount = 0;

  begin(position: number, length: number, kind: 'write' | 'discard' = 'write'): void {
    this.begunCount++;
    const pages = pagesTouched(position, length);
    this.pageCount += pages;
    if (kind === 'discard') this.discardPageCount += pages;
  }

  end(): void {
    this.endedCount++;
  }

  tally(): OriginWriteTally {
    // One thread: no reading can fall between the two; the order is the contract's anyway.
    const ended = this.endedCount;
    return { begun: this.begunCount, ended, pages: this.pageCount, discardPages: this.discardPageCount };
  }
}

/**
 * Several writers' tallies as one. Each part is read `ended` before `begun`, and the
 * parts in order, all `ended` first: a sum with `ended === begun` then still proves
 * nothing was in flight (each part's ended at its reading <= its begun at the later one).
 */
export function sumOfAccountings(parts: readonly OriginWriteAccounting[]): OriginWriteAccounting {
  return {
    tally(): OriginWriteTally {
      const readings = parts.map((p) => p.tally());
      return readings.reduce((a, b) => ({
        begun: a.begun + b.begun,
        ended: a.ended + b.ended,
        pages: a.pages + b.pages,
        discardPages: a.discardPages + b.discardPages,
      }), { begun: 0, ended: 0, pages: 0, discardPages: 0 });
    },
  };
}
