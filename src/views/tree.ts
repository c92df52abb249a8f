/**
 * The tree of the mount and what each path means:
 *
 *   /origin  /events  /status  /control  /snapshots/  /snapshots/NAME/{image,cbtmap,info}
 *
 * Path-level operations (getattr, readdir, open, mkdir, rmdir, truncate) are answered
 * here; an open yields a FileView, and from then on the file is reached only through
 * its handle. Anything the tree does not allow gets one clear errno.
 */
import { constants as fsc } from 'node:fs';
import type { SnapshotEngine } from '../engine/engine.js';
import type { Snapshot } from '../engine/snapshot.js';
import { BlksnapError } from '../errors.js';
import { BytesFile } from './bytes-file.js';
import { ControlFile, type ControlCommands } from './control-file.js';
import { EventsFile } from './events-file.js';
import type { FileView } from './file-view.js';
import { ImageFile } from './image-file.js';
import { OriginFile } from './origin-file.js';
import { jsonBytes, mountStatus, snapshotInfo, type MountFacts } from './state-json.js';

export type Node =
  | { kind: 'root' }
  | { kind: 'origin' }
  | { kind: 'events' }
  | { kind: 'status' }
  | { kind: 'control' }
  | { kind: 'snapshots' }
  | { kind: 'snapshot'; snapshot: Snapshot }
  | { kind: 'image'; snapshot: Snapshot }
  | { kind: 'cbtmap'; snapshot: Snapshot }
  | { kind: 'info'; snapshot: Snapshot };

export interface Attr {
  mode: number;
  size: number;
  nlink: number;
  uid: number;
  gid: number;
  mtime: Date;
  atime: Date;
  ctime: Date;
  blksize: number;
  /** 512-byte blocks. Must not be 0 for a non-empty file: GNU tar -S takes st_blocks == 0
   *  to mean "all hole" and would archive an image as zeros. */
  blocks: number;
}

export interface StatFs {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  favail: number;
  namemax: number;
}

const ROOT_NAMES = ['origin', 'events', 'status', 'control', 'snapshots'];
const SNAPSHOT_FILES = ['image', 'cbtmap', 'info'];
const DIR = fsc.S_IFDIR;
const REG = fsc.S_IFREG;
const U32_MAX = 0xffffffff;
const O_ACCMODE = 3;

export interface TreeOptions {
  engine: SnapshotEngine;
  facts: MountFacts;
  commands: ControlCommands;
  uid: number;
  gid: number;
}

export class Tree {
  private readonly engine: SnapshotEngine;

  constructor(private readonly options: TreeOptions) {
    this.engine = options.engine;
  }

  resolve(path: string): Node | null {
    // libfuse passes "" for a node whose name is gone (an open image after rmdir).
    if (!path.startsWith('/')) return null;
    const parts = path.split('/').filter((p) => p.length > 0);
    const [top, name, file] = parts;
    if (top === undefined) return { kind: 'root' };
    if (parts.length === 1) {
      switch (top) {
        case 'origin': return { kind: 'origin' };
        case 'events': return { kind: 'events' };
        case 'status': return { kind: 'status' };
        case 'control': return { kind: 'control' };
        case 'snapshots': return { kind: 'snapshots' };
        default: return null;
      }
    }
    if (top !== 'snapshots' || name === undefined || parts.length > 3) return null;
    const snapshot = this.engine.get(name);
    if (snapshot === undefined) return null;
    if (file === undefined) return { kind: 'snapshot', snapshot };
    switch (file) {
      case 'image': return { kind: 'image', snapshot };
      case 'cbtmap': return { kind: 'cbtmap', snapshot };
      case 'info': return { kind: 'info', snapshot };
      default: return null;
    }
  }

  private need(path: string): Node {
    const node = this.resolve(path);
    if (node === null) throw BlksnapError.of('ENOENT', `${path}: no such file`);
    return node;
  }

  getattr(path: string): Attr {
    const node = this.need(path);
    const { uid, gid, facts } = this.options;
    const base = { nlink: 1, uid, gid, mtime: facts.mountedAt, atime: facts.mountedAt, ctime: facts.mountedAt, blksize: 4096 };
    const file = (mode: number, size: number): Attr => ({ ...base, mode: REG | mode, size, blocks: Math.ceil(size / 512) });
    const dir = (mode: number, nlink: number): Attr => ({ ...base, mode: DIR | mode, size: 4096, nlink, blocks: 8 });
    switch (node.kind) {
      case 'root': return dir(0o755, 3);
      case 'snapshots': return dir(0o755, 2 + this.engine.list().length);
      case 'origin': return { ...file(facts.readOnly ? 0o444 : 0o644, this.engine.originSize), blksize: this.engine.geometry.chunkSize };
      case 'events': return file(0o444, 0);
      case 'status': return file(0o444, jsonBytes(mountStatus(this.engine, facts)).length);
      case 'control': return file(0o200, 0);
      case 'snapshot': {
        const t = node.snapshot.created;
        return { ...dir(0o555, 2), mtime: t, ctime: t, atime: t };
      }
      case 'image':
      case 'cbtmap':
      case 'info': {
        const t = node.snapshot.created;
        const size = node.kind === 'image' ? node.snapshot.deviceCapacity
          : node.kind === 'cbtmap' ? node.snapshot.cbt.map.length
          : jsonBytes(snapshotInfo(this.engine, node.snapshot)).length;
        return { ...file(0o444, size), mtime: t, ctime: t, atime: t };
      }
    }
  }

  readdir(path: string): string[] {
    const node = this.need(path);
    switch (node.kind) {
      case 'root': return ROOT_NAMES;
      case 'snapshots': return this.engine.list().map((s) => s.name);
      case 'snapshot': return SNAPSHOT_FILES;
      default: throw BlksnapError.of('ENOTDIR', `${path} is not a directory`);
    }
  }

  open(path: string, flags: number): FileView {
    const node = this.need(path);
    const access = flags & O_ACCMODE;
    const writing = access !== fsc.O_RDONLY;
    const readOnlyFile = (what: string, code: 'EACCES' | 'EROFS' = 'EACCES'): void => {
      if (writing) throw BlksnapError.of(code, `${what} is read-only`);
    };
    switch (node.kind) {
      case 'root':
      case 'snapshots':
      case 'snapshot':
        throw BlksnapError.of('EISDIR', `${path} is a directory`);
      case 'origin':
        if (writing && this.options.facts.readOnly) throw BlksnapError.of('EROFS', 'the origin is mounted read-only (-o ro)');
        return new OriginFile(this.engine);
      case 'events':
        readOnlyFile('/events');
        return new EventsFile(this.engine.events);
      case 'status':
        readOnlyFile('/status');
        return new BytesFile(jsonBytes(mountStatus(this.engine, this.options.facts)));
      case 'control':
        if (access !== fsc.O_WRONLY) throw BlksnapError.of('EACCES', '/control is write-only');
        return new ControlFile(this.options.commands);
      case 'image':
        readOnlyFile('snapshot images', 'EROFS');
        return new ImageFile(this.engine, node.snapshot);
      case 'cbtmap': {
        readOnlyFile('cbtmap', 'EROFS');
        const snap = node.snapshot;
        this.engine.acquire(snap);
        return new BytesFile(snap.cbt.map, () => this.engine.release(snap));
      }
      case 'info':
        readOnlyFile('info', 'EROFS');
        return new BytesFile(jsonBytes(snapshotInfo(this.engine, node.snapshot)));
    }
  }

  async mkdir(path: string): Promise<void> {
    const parts = path.split('/').filter((p) => p.length > 0);
    if (parts.length !== 2 || parts[0] !== 'snapshots' || parts[1] === undefined) {
      throw BlksnapError.of('EPERM', 'snapshots are taken with mkdir snapshots/NAME; nothing else can be created');
    }
    await this.engine.take(parts[1]);
  }

  rmdir(path: string): void {
    const node = this.need(path);
    if (node.kind !== 'snapshot') throw BlksnapError.of('EPERM', `${path} cannot be removed`);
    this.engine.destroy(node.snapshot.name);
  }

  /** Nothing grows or shrinks: truncating to the current size is the only allowed case. */
  truncate(path: string, size: number): void {
    const node = this.need(path);
    if (node.kind === 'control' || node.kind === 'events') return; // `echo cmd > control` truncates first
    const current = this.getattr(path).size;
    if (size === current) return;
    if (node.kind === 'origin') throw BlksnapError.of('EPERM', `the origin's size is fixed at ${current} bytes`);
    throw BlksnapError.of('EROFS', `${path} cannot be truncated`);
  }

  statfs(): StatFs {
    const s = this.engine.storage.stats();
    const bsize = 4096;
    const clamp = (n: number): number => Math.min(U32_MAX, Math.floor(n / bsize));
    return {
      bsize, frsize: bsize, blocks: clamp(s.size), bfree: clamp(s.free), bavail: clamp(s.free),
      files: 0, ffree: 0, favail: 0, namemax: 255,
    };
  }
}
