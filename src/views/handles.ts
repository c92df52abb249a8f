/**
 * Open files by handle number. FUSE stores the number in its file info and hands it
 * back with every read, write and release; 0 means "no handle" to fuse-native, so
 * numbers start at 1.
 */
import { BlksnapError } from '../errors.js';
import type { FileView } from './file-view.js';

export class HandleTable {
  private readonly views = new Map<number, FileView>();
  private next = 1;

  add(view: FileView): number {
    while (this.views.has(this.next) || this.next === 0) this.next = (this.next + 1) >>> 0;
    const fh = this.next;
    this.next = (this.next + 1) >>> 0;
    this.views.set(fh, view);
    return fh;
  }

  get(fh: number): FileView {
    const view = this.views.get(fh);
    if (view === undefined) throw BlksnapError.of('EBADF', `no open file with handle ${fh}`);
    return view;
  }

  remove(fh: number): void {
    const view = this.views.get(fh);
    this.views.delete(fh);
    view?.release();
  }

  get size(): number {
    return this.views.size;
  }
}
