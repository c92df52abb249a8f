/**
 * A read-only file whose contents are fixed when it is opened: info and status JSON
 * (rendered once per open, so a reader never sees half of one state and half of the
 * next) and the cbtmap (the snapshot's own map; the snapshot is referenced while open).
 */
import { BlksnapError } from '../errors.js';
import { clampRead, type FileView, type ReadTarget } from './file-view.js';
import { seekWithoutHoles, type SeekWhat } from './sparse.js';

export class BytesFile implements FileView {
  constructor(private readonly bytes: Uint8Array, private readonly onRelease: () => void = () => undefined) {}

  read(into: ReadTarget, length: number, position: number): Promise<number> {
    const n = clampRead(this.bytes.length, length, position);
    if (n > 0) into(n).set(this.bytes.subarray(position, position + n), 0);
    return Promise.resolve(n);
  }

  write(): Promise<number> {
    return Promise.reject(BlksnapError.of('EACCES', 'this file is read-only'));
  }

  seek(offset: number, what: SeekWhat): Promise<number> {
    return Promise.resolve(seekWithoutHoles(this.bytes.length, offset, what));
  }

  async fsync(): Promise<void> {}

  release(): void {
    this.onRelease();
  }
}
