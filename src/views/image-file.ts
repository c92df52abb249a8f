/**
 * /snapshots/NAME/image: the origin as it was when the snapshot was taken, writable
 * unless the mount is read-only (writes change only this image: engine.writeImage).
 * The open file holds a reference to the snapshot object (not its name): after rmdir
 * it keeps reading and writing the same data, and the space is freed at its release.
 * Range rules as for /origin: a write that starts at or past the end fails with
 * ENOSPC, one that straddles the end is cut short. SEEK_DATA / SEEK_HOLE report the
 * image's holes, exact for the snapshot; fallocate (punch, zero range) writes zeros to
 * the image's private copies (sparse.ts).
 */
import type { SnapshotEngine } from '../engine/engine.js';
import type { Snapshot } from '../engine/snapshot.js';
import { BlksnapError } from '../errors.js';
import { clampRead, type FileView, type ReadTarget } from './file-view.js';
import { checkFallocate, checkSeekOffset, seekAnswer, type SeekWhat } from './sparse.js';

export class ImageFile implements FileView {
  private released = false;

  constructor(private readonly engine: SnapshotEngine, private readonly snapshot: Snapshot) {
    engine.acquire(snapshot);
  }

  async read(into: ReadTarget, length: number, position: number): Promise<number> {
    const n = clampRead(this.snapshot.deviceCapacity, length, position);
    if (n > 0) await this.engine.readImage(this.snapshot, into(n), 0, n, position);
    return n;
  }

  async write(buf: Buffer, length: number, position: number): Promise<number> {
    const size = this.snapshot.deviceCapacity;
    if (position >= size) throw BlksnapError.of('ENOSPC', `write at ${position} is past the end of the image (${size} bytes)`);
    const n = Math.min(length, size - position);
    await this.engine.writeImage(this.snapshot, buf, 0, n, position);
    return n;
  }

  async seek(offset: number, what: SeekWhat): Promise<number> {
    checkSeekOffset(this.snapshot.deviceCapacity, offset);
    return seekAnswer(await this.engine.seekImage(this.snapshot, offset, what), offset);
  }

  async fallocate(mode: number, offset: number, length: number): Promise<void> {
    const range = checkFallocate(mode, offset, length, this.snapshot.deviceCapacity, 'a snapshot image');
    await this.engine.zeroImage(this.snapshot, range.offset, range.length);
  }

  async fsync(): Promise<void> {}

  release(): void {
    if (this.released) return;
    this.released = true;
    this.engine.release(this.snapshot);
  }
}
