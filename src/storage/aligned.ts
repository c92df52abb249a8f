/**
 * Buffers aligned for O_DIRECT, and a fixed pool of them.
 *
 * Node's Buffers carry no alignment guarantee, and O_DIRECT on ext4 rejects most of
 * them with EINVAL (tmpfs accepts anything and hides the bug). We over-allocate by one
 * alignment unit and slice at the first aligned address; the slice keeps the backing
 * memory alive, and the garbage collector frees it as usual.
 */
import { addressOf } from './native.js';

/** Direct I/O offsets, lengths and addresses are multiples of this. */
export const DIRECT_IO_ALIGNMENT = 4096;

export function allocAligned(size: number, alignment = DIRECT_IO_ALIGNMENT): Buffer {
  const raw = Buffer.allocUnsafeSlow(size + alignment);
  const misalignment = Number(addressOf(raw) % BigInt(alignment));
  const start = misalignment === 0 ? 0 : alignment - misalignment;
  return raw.subarray(start, start + size);
}

export function alignDown(value: number, alignment = DIRECT_IO_ALIGNMENT): number {
  return Math.floor(value / alignment) * alignment;
}

export function alignUp(value: number, alignment = DIRECT_IO_ALIGNMENT): number {
  return Math.ceil(value / alignment) * alignment;
}

/**
 * A fixed set of aligned buffers handed out one at a time. `acquire` waits when all
 * are in use: this bounds the memory of concurrent copy-on-write work, and the hot
 * path allocates nothing per request. With `lazy`, a buffer is made the first time it
 * is needed (at most `count`), so a large bound costs nothing until work needs it.
 */
export class AlignedBufferPool {
  readonly bufferSize: number;
  readonly count: number;
  private made = 0;
  private readonly free: Buffer[] = [];
  private readonly waiters: Array<(buf: Buffer) => void> = [];

  constructor(bufferSize: number, count: number, options: { lazy?: boolean } = {}) {
    this.bufferSize = bufferSize;
    this.count = count;
    if (options.lazy !== true) while (this.made < count) this.make();
  }

  private make(): void {
    this.free.push(allocAligned(this.bufferSize));
    this.made++;
  }

  acquire(): Promise<Buffer> {
    if (this.free.length === 0 && this.made < this.count) this.make();
    const buf = this.free.pop();
    if (buf !== undefined) return Promise.resolve(buf);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** A buffer now, or null when every one is in use (no waiting). */
  tryAcquire(): Buffer | null {
    if (this.free.length === 0 && this.made < this.count) this.make();
    return this.free.pop() ?? null;
  }

  release(buf: Buffer): void {
    const next = this.waiters.shift();
    if (next !== undefined) next(buf);
    else this.free.push(buf);
  }
}
