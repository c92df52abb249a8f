/**
 * The seam between the views and the FUSE transports. The views answer in terms of
 * node ids, open handles and the caller; a transport (libfuse 3's low-level API, or
 * fuse-native's path API through a small path walker) turns kernel requests into these
 * calls and the results into replies. Nothing here knows a binding.
 *
 * Every method may throw a BlksnapError; the transport answers its errno.
 */
import type { IoRequest, ReadTarget, RequestContext } from './file-view.js';

/** FUSE's node id; 1 is the root. */
export type NodeId = number;

export interface Attr {
  ino: NodeId;
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
   *  to mean "all hole" and would archive an image as zeros. Below the size for a file
   *  with holes (/origin, images): cp looks for holes only then. */
  blocks: number;
}

/** An answer to lookup or mkdir: the node, its attributes, and how long the kernel may keep them. */
export interface Entry {
  attr: Attr;
  entryTimeout: number;
  attrTimeout: number;
}

export interface AttrReply {
  attr: Attr;
  attrTimeout: number;
}

/** What an open returns: the handle, and how the kernel should treat this open file. */
export interface OpenReply {
  fh: number;
  /** Every read and write reaches the daemon (no page cache). */
  directIo: boolean;
  /** Keep pages cached from an earlier open (false: the kernel drops them at open). */
  keepCache: boolean;
  /** A stream: no seeking (/events). */
  nonseekable: boolean;
  /** Synchronous direct writes may run in parallel (the kernel otherwise serializes them per inode). */
  parallelDirectWrites: boolean;
}

export interface DirEntry {
  name: string;
  ino: NodeId;
  mode: number;
}

export interface SetAttrChanges {
  size?: number;
  /** chmod, chown or chgrp was asked for. */
  owner?: boolean;
  /** utimes/touch. */
  times?: boolean;
}

export interface StatFs {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  namemax: number;
}

export type RefusedOp = 'unlink' | 'rename' | 'create' | 'mknod' | 'link' | 'symlink';

export interface FileSystem {
  /** Find `name` in `parent`; counts one kernel reference to the node (see forget). */
  lookup(parent: NodeId, name: string, ctx: RequestContext): Entry;
  /** The kernel dropped `count` references to `ino`. */
  forget(ino: NodeId, count: number): void;
  /** Attributes of a node, from the open handle `fh` when the kernel gives one. */
  getattr(ino: NodeId, fh: number | null): AttrReply;
  setattr(ino: NodeId, fh: number | null, changes: SetAttrChanges, ctx: RequestContext): AttrReply;
  open(ino: NodeId, flags: number, ctx: RequestContext): OpenReply;
  read(fh: number, into: ReadTarget, length: number, position: number, req: IoRequest): Promise<number>;
  write(fh: number, buf: Buffer, length: number, position: number, req: IoRequest): Promise<number>;
  /** close(2) of one descriptor of the open file (release comes after the last). */
  flush(fh: number, req: IoRequest): Promise<void>;
  /**
   * lseek with SEEK_DATA (3) or SEEK_HOLE (4) on an open file: the offset found; ENXIO
   * when there is none. Never ENOSYS (the kernel would stop asking for the whole mount).
   */
  lseek(fh: number, offset: number, whence: number): Promise<number>;
  /** fallocate(2) on an open file (FALLOC_FL_* mode bits). Never ENOSYS, as for lseek. */
  fallocate(fh: number, mode: number, offset: number, length: number): Promise<void>;
  fsync(fh: number, datasync: boolean): Promise<void>;
  release(fh: number): void;
  opendir(ino: NodeId, ctx: RequestContext): number;
  /** The whole listing of an open directory (fixed at opendir), "." and ".." first. */
  readdir(fh: number): readonly DirEntry[];
  releasedir(fh: number): void;
  mkdir(parent: NodeId, name: string, ctx: RequestContext): Promise<Entry>;
  rmdir(parent: NodeId, name: string, ctx: RequestContext): void;
  /** Operations this tree never allows: throws the errno that says so. */
  refuse(op: RefusedOp): never;
  statfs(): StatFs;
}
