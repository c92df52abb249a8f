/**
 * A sparse array of uint32, zero by default, stored in fixed pages that exist only
 * once something in them is non-zero. Per-chunk state costs memory only where chunks
 * were touched, so a 16 TiB origin with a few saved chunks stays small.
 */
// 256 entries (1 KiB) a page: scattered writes over a huge origin cost about 1 KiB per
// touched chunk per array, not 16 KiB as with 4096-entry pages (measured by the bench),
// while dense state still costs 4 bytes an entry plus a Map entry per 256.
const PAGE_BITS = 8;
const PAGE_SIZE = 1 << PAGE_BITS;
const PAGE_MASK = PAGE_SIZE - 1;

export class PagedU32 {
  private readonly pages = new Map<number, Uint32Array>();

  get(index: number): number {
    const page = this.pages.get(Math.floor(index / PAGE_SIZE));
    return page === undefined ? 0 : (page[index & PAGE_MASK] ?? 0);
  }

  set(index: number, value: number): void {
    const key = Math.floor(index / PAGE_SIZE);
    let page = this.pages.get(key);
    if (page === undefined) {
      if (value === 0) return;
      page = new Uint32Array(PAGE_SIZE);
      this.pages.set(key, page);
    }
    page[index & PAGE_MASK] = value;
  }

  /** Visit every non-zero entry (the callback may set entries, including to zero). */
  forEachNonZero(visit: (index: number, value: number) => void): void {
    for (const [key, page] of this.pages) {
      for (let i = 0; i < PAGE_SIZE; i++) {
        const value = page[i] ?? 0;
        if (value !== 0) visit(key * PAGE_SIZE + i, value);
      }
    }
  }
}
