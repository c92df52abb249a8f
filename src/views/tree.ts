/**
 * The tree of the mount and what each node means:
 *
 *   /origin  /events  /status  /control  /snapshots/  /snapshots/NAME/{image,cbtmap,info}
 *
 * Node-level operations (lookup, getattr, open, mkdir, rmdir, setattr) are answered
 * here; an open yields a FileView, and from then on the file is reached only through its
 * handle. Anything the tree does not allow gets one clear errno.
 */
import { constants as fsc } from 'node:fs';
import type { SnapshotEngine } from '../engine/engine.js';
import type { Logger } from '../engine/logger.js';
import { BlksnapError } from '../errors.js';
import { BytesFile } from './bytes-file.js';
import { ControlFile, type ControlCommands } from './control-file.js';
import { EventsFile } from './events-file.js';
import type { FileView, IoRequest, ReadTarget, RequestContext } from './file-view.js';
import type {
  Attr, AttrReply, DirEntry, Entry, FileSystem, NodeId, OpenReply, RefusedOp, SetAttrChanges, StatFs,
} from './filesystem.js';
import { HandleTable } from './handles.js';
import { ImageFile } from './image-file.js';
import { treeModes, type TreeModes } from './modes.js';
import { NodeTable, ROOT_NAMES, SNAPSHOT_FILES, snapshotNode, staticNode, type Node } from './nodes.js';
import { OriginFile } from './origin-file.js';
import { seekWhat, seekWithoutHoles } from './sparse.js';
import { jsonBytes, mountStatus, snapshotInfo, type MountFacts } from './state-json.js';

const DIR = fsc.S_IFDIR;
const REG = fsc.S_IFREG;
const U32_MAX = 0xffffffff;
const O_ACCMODE = 3;
/** Names and attributes that never change may be cached by the kernel this long (s). */
const STABLE_TIMEOUT = 1;

/**
 * st_blocks for `allocated` bytes of a file of `size`: at most the size, and never 0
 * for a non-empty file (GNU tar -S would take it as all hole without looking; with one
 * block it asks SEEK_DATA, which is exact).
 */
function blocksOf(size: number, allocated: number): number {
  const blocks = Math.ceil(Math.min(size, allocated) / 512);
  return size > 0 ? Math.max(1, blocks) : blocks;
}

export interface TreeOptions {
  engine: SnapshotEngine;
  facts: MountFacts;
  commands: ControlCommands;
  /** Where a /control line that fails at the last close is reported (nobody else can be told). */
  log?: Logger;
  /** Owner of every file in the mount (uid=/gid= or the daemon's own). */
  uid: number;
  gid: number;
}

export class MountTree implements FileSystem {
  private readonly engine: SnapshotEngine;
  private readonly nodes = new NodeTable();
  readonly handles = new HandleTable();
  private readonly dirs = new Map<number, readonly DirEntry[]>();
  private nextDir = 1;
  private readonly modes: TreeModes;

  constructor(private readonly options: TreeOptions) {
    this.engine = options.engine;
    this.modes = treeModes(this.engine.origin.identity.mode, options.facts.readOnly);
  }

  // ---- nodes --------------------------------------------------------------------

  private node(ino: NodeId): Node {
    const node = this.nodes.get(ino);
    if (node === undefined) throw BlksnapError.of('ENOENT', `node ${ino} is gone`);
    return node;
  }

  /** The child `name` of `parent`, or null. Counts nothing. */
  private child(parent: Node, name: string): Node | null {
    switch (parent.kind) {
      case 'root':
        return (ROOT_NAMES as readonly string[]).includes(name) ? staticNode(name as (typeof ROOT_NAMES)[number]) : null;
      case 'snapshots': {
        const snapshot = this.engine.get(name);
        return snapshot === undefined ? null : snapshotNode(snapshot, 'snapshot');
      }
      case 'snapshot':
        return (SNAPSHOT_FILES as readonly string[]).includes(name)
          ? snapshotNode(parent.snapshot, name as (typeof SNAPSHOT_FILES)[number])
          : null;
      default:
        throw BlksnapError.of('ENOTDIR', `node ${parent.ino} is not a directory`);
    }
  }

  private entry(node: Node): Entry {
    this.nodes.remember(node);
    // Snapshot names come and go (rmdir, mkdir of the same name): never cached.
    const entryTimeout = node.kind === 'snapshot' ? 0 : STABLE_TIMEOUT;
    return { attr: this.attr(node), entryTimeout, attrTimeout: this.attrTimeout(node) };
  }

  private attrTimeout(node: Node): number {
    // /status and info change size as the state changes; the rest is fixed.
    return node.kind === 'status' || node.kind === 'info' || node.kind === 'snapshots' ? 0 : STABLE_TIMEOUT;
  }

  lookup(parent: NodeId, name: string): Entry {
    const node = this.child(this.node(parent), name);
    if (node === null) throw BlksnapError.of('ENOENT', `${name}: no such file`);
    return this.entry(node);
  }

  forget(ino: NodeId, count: number): void {
    this.nodes.forget(ino, count);
  }

  // ---- attributes ---------------------------------------------------------------

  private attr(node: Node): Attr {
    const { uid, gid, facts } = this.options;
    const m = this.modes;
    const base = { ino: node.ino, nlink: 1, uid, gid, mtime: facts.mountedAt, atime: facts.mountedAt, ctime: facts.mountedAt, blksize: 4096 };
    const file = (mode: number, size: number, allocated = size): Attr => ({ ...base, mode: REG | mode, size, blocks: blocksOf(size, allocated) });
    const dir = (mode: number, nlink: number): Attr => ({ ...base, mode: DIR | mode, size: 4096, nlink, blocks: 8 });
    switch (node.kind) {
      case 'root': return dir(m.directory, 3);
      case 'snapshots': return dir(m.snapshotsDir, 2 + this.engine.list().length);
      case 'origin': {
        // The origin's own allocation, as last seen; the next getattr sees a fresh one.
        const allocated = this.engine.origin.allocatedBytes;
        this.engine.origin.refreshAllocationSoon();
        return { ...file(m.origin, this.engine.originSize, allocated), blksize: this.engine.geometry.chunkSize };
      }
      case 'events': return file(m.readOnlyFile, 0);
      case 'status': return file(m.readOnlyFile, jsonBytes(mountStatus(this.engine, facts)).length);
      case 'control': return file(m.control, 0);
      case 'snapshot':
      case 'image':
      case 'cbtmap':
      case 'info': {
        const t = node.snapshot.created;
        const times = { mtime: t, ctime: t, atime: t };
        if (node.kind === 'snapshot') return { ...dir(m.directory, 2), ...times };
        const size = node.kind === 'image' ? node.snapshot.deviceCapacity
          : node.kind === 'cbtmap' ? node.snapshot.cbt.map.length
          : jsonBytes(snapshotInfo(this.engine, node.snapshot)).length;
        if (node.kind === 'image') return { ...file(m.image, size, this.engine.imageAllocatedBytes(node.snapshot)), ...times };
        return { ...file(m.readOnlyFile, size), ...times };
      }
    }
  }

  getattr(ino: NodeId, fh: number | null): AttrReply {
    const node = this.nodeOf(ino, fh);
    return { attr: this.attr(node), attrTimeout: this.attrTimeout(node) };
  }

  /** An open file answers for itself, whatever happened to its name since (and whatever node id the transport has). */
  private nodeOf(ino: NodeId, fh: number | null): Node {
    return fh !== null && this.handles.has(fh) ? this.handles.node(fh) : this.node(ino);
  }

  /** Nothing grows or shrinks and modes are fixed; truncating to the current size and touch are fine. */
  setattr(ino: NodeId, fh: number | null, changes: SetAttrChanges): AttrReply {
    const node = this.nodeOf(ino, fh);
    const reply = { attr: this.attr(node), attrTimeout: this.attrTimeout(node) };
    if (changes.owner === true) throw BlksnapError.of('EPERM', 'modes and owners are fixed');
    if (changes.size !== undefined && changes.size !== reply.attr.size) {
      // `echo cmd > control` truncates first.
      if (node.kind === 'control' || node.kind === 'events') return reply;
      if (node.kind === 'origin') throw BlksnapError.of('EPERM', `the origin's size is fixed at ${reply.attr.size} bytes`);
      if (node.kind === 'image' && !this.options.facts.readOnly) throw BlksnapError.of('EPERM', `an image's size is fixed at ${reply.attr.size} bytes`);
      throw BlksnapError.of('EROFS', `${node.kind} cannot be truncated`);
    }
    return reply;
  }

  // ---- files --------------------------------------------------------------------

  open(ino: NodeId, flags: number, ctx: RequestContext): OpenReply {
    const node = this.node(ino);
    const view = this.openView(node, flags, ctx);
    const fh = this.handles.add(view, node);
    // Every file is direct I/O: /events is a stream that `cat` can follow only this
    // way, /status and info are rendered per open, and /origin behaves like a block
    // device (no second cache under a loop device). Images too: the kernel's cache
    // would save repeated reads, but reads of a saved chunk are already cached by the
    // engine and a fresh snapshot is read once by a backup (bench/README.md).
    // /origin takes parallel direct writes: the engine orders what must be ordered
    // (copies per chunk, the take's gate), so the kernel need not serialize writers.
    return { fh, directIo: true, keepCache: false, nonseekable: node.kind === 'events', parallelDirectWrites: node.kind === 'origin' };
  }

  private openView(node: Node, flags: number, _ctx: RequestContext): FileView {
    const access = flags & O_ACCMODE;
    const writing = access !== fsc.O_RDONLY;
    const readOnlyFile = (what: string, code: 'EACCES' | 'EROFS' = 'EACCES'): void => {
      if (writing) throw BlksnapError.of(code, `${what} is read-only`);
    };
    switch (node.kind) {
      case 'root':
      case 'snapshots':
      case 'snapshot':
        throw BlksnapError.of('EISDIR', 'that is a directory');
      case 'origin':
        if (writing && this.options.facts.readOnly) throw BlksnapError.of('EROFS', 'the origin is mounted read-only (-o ro)');
        return new OriginFile(this.engine);
      case 'events':
        readOnlyFile('/events');
        // An O_DIRECT open would let asynchronous reads that wait for events fill the
        // kernel's queue of background requests, which every user's asynchronous I/O
        // shares: waiting must cost only the waiter.
        if ((flags & fsc.O_DIRECT) !== 0) throw BlksnapError.of('EINVAL', '/events is a stream: open it without O_DIRECT');
        return new EventsFile(this.engine.events);
      case 'status':
        readOnlyFile('/status');
        return new BytesFile(jsonBytes(mountStatus(this.engine, this.options.facts)));
      case 'control':
        if (access !== fsc.O_WRONLY) throw BlksnapError.of('EACCES', '/control is write-only');
        return new ControlFile(this.options.commands, this.options.log ?? null);
      case 'image':
        if (writing && this.options.facts.readOnly) throw BlksnapError.of('EROFS', 'snapshot images are read-only on a read-only mount (-o ro)');
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

  read(fh: number, into: ReadTarget, length: number, position: number, req: IoRequest): Promise<number> {
    return this.handles.get(fh).read(into, length, position, req);
  }

  write(fh: number, buf: Buffer, length: number, position: number, req: IoRequest): Promise<number> {
    return this.handles.get(fh).write(buf, length, position, req);
  }

  async flush(fh: number, req: IoRequest): Promise<void> {
    const view = this.handles.get(fh);
    if (view.flush !== undefined) await view.flush(req);
  }

  async lseek(fh: number, offset: number, whence: number): Promise<number> {
    const what = seekWhat(whence);
    const view = this.handles.get(fh);
    if (view.seek !== undefined) return view.seek(offset, what);
    return seekWithoutHoles(this.attr(this.handles.node(fh)).size, offset, what);
  }

  async fallocate(fh: number, mode: number, offset: number, length: number): Promise<void> {
    const view = this.handles.get(fh);
    if (view.fallocate === undefined) throw BlksnapError.of('EOPNOTSUPP', `fallocate is not supported on ${this.handles.node(fh).kind}`);
    await view.fallocate(mode, offset, length);
  }

  fsync(fh: number): Promise<void> {
    return this.handles.get(fh).fsync();
  }

  release(fh: number): void {
    this.handles.remove(fh);
  }

  // ---- directories --------------------------------------------------------------

  opendir(ino: NodeId): number {
    const node = this.node(ino);
    const self = (n: Node): DirEntry => ({ name: '', ino: n.ino, mode: DIR });
    let entries: DirEntry[];
    const file = (n: Node, name: string): DirEntry => ({ name, ino: n.ino, mode: n.kind === 'snapshots' || n.kind === 'snapshot' ? DIR : REG });
    switch (node.kind) {
      case 'root':
        entries = ROOT_NAMES.map((name) => file(staticNode(name), name));
        break;
      case 'snapshots':
        entries = this.engine.list().map((s) => file(snapshotNode(s, 'snapshot'), s.name));
        break;
      case 'snapshot':
        entries = SNAPSHOT_FILES.map((name) => file(snapshotNode(node.snapshot, name), name));
        break;
      default:
        throw BlksnapError.of('ENOTDIR', 'not a directory');
    }
    const parent = node.kind === 'snapshot' ? staticNode('snapshots') : node.kind === 'snapshots' ? staticNode('root') : node;
    const fh = this.nextDir++;
    this.dirs.set(fh, [{ ...self(node), name: '.' }, { ...self(parent), name: '..' }, ...entries]);
    return fh;
  }

  readdir(fh: number): readonly DirEntry[] {
    const entries = this.dirs.get(fh);
    if (entries === undefined) throw BlksnapError.of('EBADF', `no open directory with handle ${fh}`);
    return entries;
  }

  releasedir(fh: number): void {
    this.dirs.delete(fh);
  }

  async mkdir(parent: NodeId, name: string): Promise<Entry> {
    if (this.node(parent).kind !== 'snapshots') {
      throw BlksnapError.of('EPERM', 'snapshots are taken with mkdir snapshots/NAME; nothing else can be created');
    }
    const snapshot = await this.engine.take(name);
    return this.entry(snapshotNode(snapshot, 'snapshot'));
  }

  rmdir(parent: NodeId, name: string): void {
    const node = this.child(this.node(parent), name);
    if (node === null) throw BlksnapError.of('ENOENT', `${name}: no such snapshot`);
    if (node.kind !== 'snapshot') throw BlksnapError.of('EPERM', `${name} cannot be removed`);
    this.engine.destroy(node.snapshot.name);
  }

  refuse(op: RefusedOp): never {
    switch (op) {
      case 'unlink': throw BlksnapError.of('EPERM', 'files cannot be removed here; rmdir snapshots/NAME destroys a snapshot');
      case 'rename': throw BlksnapError.of('EPERM', 'nothing can be renamed here');
      case 'create':
      case 'mknod': throw BlksnapError.of('EPERM', 'files cannot be created here; mkdir snapshots/NAME takes a snapshot');
      case 'link':
      case 'symlink': throw BlksnapError.of('EPERM', 'links cannot be made here');
    }
  }

  statfs(): StatFs {
    const s = this.engine.storage.stats();
    const bsize = 4096;
    const clamp = (n: number): number => Math.min(U32_MAX, Math.floor(n / bsize));
    return { bsize, frsize: bsize, blocks: clamp(s.size), bfree: clamp(s.free), bavail: clamp(s.free), files: 0, ffree: 0, namemax: 255 };
  }

  /** Kernel references to snapshot nodes still held (for /status and tests). */
  get knownNodes(): number {
    return this.nodes.size;
  }
}
