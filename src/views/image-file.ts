/**
 * /snapshots/NAME/image: the origin as it was when the snapshot was taken. The open
 * file holds a reference to the snapshot object (not its name): after rmdir it keeps
 * reading the same data, and the space is freed at its release.
 */
import type { SnapshotEngine } from '../engine/engine.js';
import type { Snapshot } from '../engine/snapshot.js';
import { BlksnapError } from '../errors.js';
import { clampRead, type FileView } from './file-view.js';

export class ImageFile implements FileView {
  private released = false;

  constructor(private readonly engine: SnapshotEngine, private readonly snapshot: Snapshot) {
    engine.acquire(snapshot);
  }

  async read(buf: Buffer, length: number, position: number): Promise<number> {
    const n = clampRead(this.snapshot.deviceCapacity, length, position);
    if (n > 0) await this.engine.readImage(this.snapshot, buf, 0, n, position);
    return n;
  }

  write(): Promise<number> {
    return Promise.reject(BlksnapError.of('EROFS', 'snapshot images are read-only'));
  }

  async fsync(): Promise<void> {}

  release(): void {
    if (this.released) return;
    this.released = true;
    this.engine.release(this.snapshot);
  }
}
