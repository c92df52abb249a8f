/**
 * Open files by handle number. FUSE stores the number in its file info and hands it
 * back with every read, write, flush and release; 0 means "no handle" to fuse-native,
 * so numbers start at 1. Each handle remembers its node, so an open file can answer
 * getattr (fstat, lseek to the end) after its name is gone.
 */
import { BlksnapError } from '../errors.js';
import type { FileView } from './file-view.js';
import type { Node } from './nodes.js';

interface OpenFile {
  view: FileView;
  node: Node;
}

export class HandleTable {
  private readonly files = new Map<number, OpenFile>();
  private next = 1;

  add(view: FileView, node: Node): number {
    while (this.files.has(this.next) || this.next === 0) this.next = (this.next + 1) >>> 0;
    const fh = this.next;
    this.next = (this.next + 1) >>> 0;
    this.files.set(fh, { view, node });
    return fh;
  }

  has(fh: number): boolean {
    return this.files.has(fh);
  }

  get(fh: number): FileView {
    return this.open(fh).view;
  }

  node(fh: number): Node {
    return this.open(fh).node;
  }

  private open(fh: number): OpenFile {
    const file = this.files.get(fh);
    if (file === undefined) throw BlksnapError.of('EBADF', `no open file with handle ${fh}`);
    return file;
  }

  remove(fh: number): void {
    const file = this.files.get(fh);
    this.files.delete(fh);
    file?.view.release();
  }

  get size(): number {
    return this.files.size;
  }
}
