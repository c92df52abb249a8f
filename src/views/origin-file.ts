/**
 * /origin: the origin as a fixed-size file with a block device's range rules. A read
 * past the end returns nothing; a write that starts at or past the end fails with
 * ENOSPC; one that straddles the end is cut short; the file never grows.
 */
import type { SnapshotEngine } from '../engine/engine.js';
import { BlksnapError } from '../errors.js';
import { clampRead, type FileView, type ReadTarget } from './file-view.js';

export class OriginFile implements FileView {
  constructor(private readonly engine: SnapshotEngine) {}

  async read(into: ReadTarget, length: number, position: number): Promise<number> {
    const n = clampRead(this.engine.originSize, length, position);
    if (n > 0) await this.engine.readOrigin(into(n), 0, n, position);
    return n;
  }

  async write(buf: Buffer, length: number, position: number): Promise<number> {
    const size = this.engine.originSize;
    if (position >= size) throw BlksnapError.of('ENOSPC', `write at ${position} is past the end of the origin (${size} bytes)`);
    const n = Math.min(length, size - position);
    await this.engine.writeOrigin(buf, 0, n, position);
    return n;
  }

  fsync(): Promise<void> {
    return this.engine.flushOrigin();
  }

  release(): void {}
}
