/**
 * /origin: the origin as a fixed-size file with a block device's range rules. A read
 * past the end returns nothing; a write that starts at or past the end fails with
 * ENOSPC; one that straddles the end is cut short; the file never grows.
 * SEEK_DATA / SEEK_HOLE report the origin's own holes; fallocate (punch, zero range) is
 * a write of zeros for snapshots and maps, then done on the origin (sparse.ts).
 */
import type { SnapshotEngine } from '../engine/engine.js';
import { BlksnapError } from '../errors.js';
import { clampRead, type FileView, type ReadTarget } from './file-view.js';
import { checkFallocate, checkSeekOffset, seekAnswer, type SeekWhat } from './sparse.js';

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

  async seek(offset: number, what: SeekWhat): Promise<number> {
    checkSeekOffset(this.engine.originSize, offset);
    return seekAnswer(await this.engine.seekOrigin(offset, what), offset);
  }

  async fallocate(mode: number, offset: number, length: number): Promise<void> {
    const range = checkFallocate(mode, offset, length, this.engine.originSize, '/origin');
    await this.engine.fallocateOrigin(range.kind, range.offset, range.length);
  }

  fsync(): Promise<void> {
    return this.engine.flushOrigin();
  }

  release(): void {}
}
