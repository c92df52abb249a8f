/**
 * Sizes derived from the origin: the copy-on-write chunk and the change-tracking block.
 * Both are powers of two of at least 4 KiB; the defaults grow with the origin so that
 * the number of chunks and of tracking blocks stays bounded (blksnap's rule), which in
 * turn bounds the daemon's memory however large the origin is.
 */
import { BlksnapError } from '../errors.js';

export const MIN_UNIT = 4096;
/** Default chunk: at least 64 KiB, at most this many chunks. */
export const DEFAULT_MIN_CHUNK = 64 * 1024;
export const MAX_DEFAULT_CHUNKS = 2 ** 21;
/** Default tracking block: at least 64 KiB, at most this many blocks (one byte each). */
export const DEFAULT_MIN_BLOCK = 64 * 1024;
export const MAX_DEFAULT_BLOCKS = 2 ** 21;
/** Chunk indexes are kept in 32 bits (copy-table.ts): a chunk_size that makes more is refused. */
export const MAX_CHUNKS = 0xffffffff;

export function isPowerOfTwo(n: number): boolean {
  // log2 of an exact power of two is exact in IEEE doubles, and works past 2^31.
  return Number.isSafeInteger(n) && n > 0 && Number.isInteger(Math.log2(n));
}

function defaultUnit(originSize: number, minimum: number, maxCount: number): number {
  let unit = minimum;
  while (Math.ceil(originSize / unit) > maxCount) unit *= 2;
  return unit;
}

export function checkUnit(what: string, value: number): number {
  if (!isPowerOfTwo(value) || value < MIN_UNIT) {
    throw BlksnapError.of('EINVAL', `${what} must be a power of two of at least 4K (got ${value})`);
  }
  return value;
}

export interface Geometry {
  originSize: number;
  chunkSize: number;
  chunkCount: number;
  blockSize: number;
  blockCount: number;
}

export function deriveGeometry(originSize: number, chunkSize?: number, blockSize?: number): Geometry {
  const chunk = chunkSize === undefined ? defaultUnit(originSize, DEFAULT_MIN_CHUNK, MAX_DEFAULT_CHUNKS) : checkUnit('chunk_size', chunkSize);
  const block = blockSize === undefined ? defaultUnit(originSize, DEFAULT_MIN_BLOCK, MAX_DEFAULT_BLOCKS) : checkUnit('block_size', blockSize);
  if (Math.ceil(originSize / chunk) > MAX_CHUNKS) {
    throw BlksnapError.of('EINVAL', `chunk_size ${chunk} cuts this origin into more than ${MAX_CHUNKS} chunks; use a larger chunk_size`);
  }
  return {
    originSize,
    chunkSize: chunk,
    chunkCount: Math.ceil(originSize / chunk),
    blockSize: block,
    blockCount: Math.ceil(originSize / block),
  };
}

/** One chunk's share of a byte range: `length` bytes at `inChunk`, `done` bytes into the range. */
export interface ChunkPiece {
  chunk: number;
  inChunk: number;
  length: number;
  done: number;
}

/** Cut [position, position + length) at chunk borders, in order. */
export function chunkPieces(chunkSize: number, position: number, length: number): ChunkPiece[] {
  const pieces: ChunkPiece[] = [];
  let done = 0;
  while (done < length) {
    const pos = position + done;
    const chunk = Math.floor(pos / chunkSize);
    const inChunk = pos - chunk * chunkSize;
    const n = Math.min(length - done, chunkSize - inChunk);
    pieces.push({ chunk, inChunk, length: n, done });
    done += n;
  }
  return pieces;
}
