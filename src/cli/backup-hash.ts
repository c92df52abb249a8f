/**
 * Checksums for backups: sha256 over byte ranges of an image, fed in pieces.
 *
 * Disk images are often mostly zeros, and a sparse 1 TiB image should not cost 1 TiB
 * of hashing. A `ZeroAwareHash` holds back leading zeros and only hashes them once
 * real data arrives; a range that stays all-zero gets the (memoised) digest of that
 * many zero bytes. Holes (found with SEEK_DATA/SEEK_HOLE, never read) are fed as a
 * count of zeros. The digest is the same plain sha256 either way, so
 * `head -c LEN | sha256sum` reproduces any checksum in a manifest.
 *
 * @example
 *   const h = new IntervalHasher([{ offset: 0, length: 8192 }]);
 *   h.update(0, firstHalf); h.update(4096, secondHalf);
 *   h.digests(); // ['<sha256 hex of the 8 KiB>']
 */
import { createHash, type Hash } from 'node:crypto';

export const HASH_ALGORITHM = 'sha256';
/** The whole-image checksum table never has more entries than this (keeps manifests small). */
export const MAX_SEGMENTS = 65536;
/**
 * Nor smaller segments than this: one sha256 per MiB is about 67 bytes per MiB of image
 * in the manifest (under 70 KB per GiB), while a changed block costs the incremental
 * verify a re-read of one MiB of the local backup image.
 */
export const MIN_SEGMENT = 1024 * 1024;

const ZERO = Buffer.alloc(1024 * 1024);
const zeroDigests = new Map<number, string>();

export function isZero(buf: Uint8Array): boolean {
  for (let at = 0; at < buf.length; at += ZERO.length) {
    const n = Math.min(ZERO.length, buf.length - at);
    if (Buffer.compare(buf.subarray(at, at + n), ZERO.subarray(0, n)) !== 0) return false;
  }
  return true;
}

function feedZeros(hash: Hash, count: number): void {
  for (let left = count; left > 0; left -= ZERO.length) hash.update(ZERO.subarray(0, Math.min(left, ZERO.length)));
}

/** sha256 of `length` zero bytes. */
export function zeroDigest(length: number): string {
  let d = zeroDigests.get(length);
  if (d === undefined) {
    const hash = createHash(HASH_ALGORITHM);
    feedZeros(hash, length);
    d = hash.digest('hex');
    zeroDigests.set(length, d);
  }
  return d;
}

export class ZeroAwareHash {
  private hash: Hash | null = null;
  private pendingZeros = 0;
  private total = 0;

  update(data: Uint8Array): void {
    this.total += data.length;
    if (this.hash === null) {
      if (isZero(data)) {
        this.pendingZeros += data.length;
        return;
      }
      this.hash = createHash(HASH_ALGORITHM);
      feedZeros(this.hash, this.pendingZeros);
    }
    this.hash.update(data);
  }

  /** `count` zero bytes, known to be zeros (a hole): nothing to look at, and nothing hashed while only zeros came. */
  updateZeros(count: number): void {
    this.total += count;
    if (this.hash === null) this.pendingZeros += count;
    else feedZeros(this.hash, count);
  }

  get length(): number {
    return this.total;
  }

  digest(): string {
    return this.hash === null ? zeroDigest(this.total) : this.hash.digest('hex');
  }
}

export interface Interval {
  offset: number;
  length: number;
}

/**
 * One hash per interval of a sorted, non-overlapping list. Data arrives as
 * (position, bytes) pieces in increasing position; each piece feeds the intervals it
 * overlaps, and bytes outside every interval are ignored.
 */
export class IntervalHasher {
  /** Hashes of intervals being fed; null once done (the digest is kept, the hash state freed). */
  private readonly hashes: Array<ZeroAwareHash | null>;
  private readonly done: string[];
  private first = 0;

  constructor(private readonly intervals: readonly Interval[]) {
    this.hashes = intervals.map((iv) => (iv.length === 0 ? null : new ZeroAwareHash()));
    this.done = intervals.map((iv) => (iv.length === 0 ? zeroDigest(0) : ''));
  }

  update(position: number, data: Uint8Array): void {
    this.feed(position, data.length, (hash, from, to) => hash.update(data.subarray(from - position, to - position)));
  }

  /** `length` zero bytes at `position` (a hole that was not read). */
  zeros(position: number, length: number): void {
    this.feed(position, length, (hash, from, to) => hash.updateZeros(to - from));
  }

  private feed(position: number, length: number, give: (hash: ZeroAwareHash, from: number, to: number) => void): void {
    const end = position + length;
    while (this.first < this.intervals.length) {
      const iv = this.intervals[this.first];
      if (iv === undefined || iv.offset + iv.length > position) break;
      this.first++;
    }
    for (let i = this.first; i < this.intervals.length; i++) {
      const iv = this.intervals[i];
      const hash = this.hashes[i];
      if (iv === undefined || iv.offset >= end) break;
      const from = Math.max(iv.offset, position);
      const to = Math.min(iv.offset + iv.length, end);
      if (to <= from || hash === null || hash === undefined) continue;
      give(hash, from, to);
      if (hash.length === iv.length) {
        this.done[i] = hash.digest();
        this.hashes[i] = null;
      }
    }
  }

  /** The digests, in interval order; every interval must have been fed completely. */
  digests(): string[] {
    this.hashes.forEach((h, i) => {
      const iv = this.intervals[i];
      if (h !== null && iv !== undefined) throw new Error(`internal: interval at ${iv.offset} got ${h.length} of ${iv.length} bytes`);
    });
    return this.done;
  }
}

/**
 * Size of one entry of the whole-image checksum table: the smallest power-of-two
 * multiple of the change-tracking block that is at least MIN_SEGMENT and keeps the
 * table at MAX_SEGMENTS.
 */
export function segmentSizeFor(imageSize: number, blockSize: number): number {
  let size = blockSize;
  while (size < MIN_SEGMENT || Math.ceil(imageSize / size) > MAX_SEGMENTS) size *= 2;
  return size;
}

/** The segments [first, last] overlapping an interval. */
export function segmentsOf(iv: Interval, segmentSize: number): [number, number] {
  return [Math.floor(iv.offset / segmentSize), Math.floor((iv.offset + iv.length - 1) / segmentSize)];
}
