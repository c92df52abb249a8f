/**
 * The typed face of our N-API addon (native/fuse3, built at `npm ci` by node-gyp into
 * build/Release). Request kinds and the layout of a batch mirror native/fuse3/session.h.
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { BlksnapError } from '../../errors.js';

/** An opaque session handle owned by the addon. */
export interface NativeSession {
  readonly __nativeSession: unique symbol;
}

export const Op = {
  LOOKUP: 1, FORGET: 2, GETATTR: 3, SETATTR: 4, OPEN: 5, READ: 6, WRITE: 7, FLUSH: 8,
  RELEASE: 9, FSYNC: 10, OPENDIR: 11, READDIR: 12, RELEASEDIR: 13, MKDIR: 14, RMDIR: 15,
  STATFS: 16, UNLINK: 17, RENAME: 18, MKNOD: 19, SYMLINK: 20, LINK: 21, CREATE: 22,
  LSEEK: 23, FALLOCATE: 24,
  /** News, with id -1 (nothing to answer): */
  INTERRUPT: 30, END: 31, FAST_DRAINED: 32,
} as const;

/**
 * Doubles per message in a batch: id op ino fh off size arg uid gid pid. News (FORGET,
 * RELEASE, RELEASEDIR, INTERRUPT, END, FAST_DRAINED) has id -1: the addon answered it
 * already or it needs no answer; an INTERRUPT's `arg` is the id of the request it
 * interrupts, and always comes after that request's own message. LSEEK: off = offset,
 * arg = whence. FALLOCATE: off = offset, size = length, arg = mode.
 */
export const FIELDS = 10;
export const F = { id: 0, op: 1, ino: 2, fh: 3, off: 4, size: 5, arg: 6, uid: 7, gid: 8, pid: 9 } as const;

/** Bits of replyOpen's flags. */
export const OPEN_DIRECT_IO = 1;
export const OPEN_KEEP_CACHE = 2;
export const OPEN_NONSEEKABLE = 4;
export const OPEN_PARALLEL_DIRECT_WRITES = 8;

/** FUSE_SET_ATTR_* bits of a setattr's `arg`. */
export const SET_ATTR = { MODE: 1, UID: 2, GID: 4, SIZE: 8, ATIME: 16, MTIME: 32, ATIME_NOW: 128, MTIME_NOW: 256, CTIME: 1024 } as const;

/** unmount() ended our session by aborting our connection (BS_OWN_ABORTED in own-mount.h). */
export const ENDED_BY_ABORT = -1;

/** An attribute array: ino mode nlink uid gid size blocks blksize atime mtime ctime (ms). */
export const ATTR_LENGTH = 11;

/**
 * Requests arrive in batches: `nums` holds FIELDS doubles per request, `extras[i]` the
 * name (lookup, mkdir, ...) or the write payload of request i. A read's buffer is asked
 * for with readBuffer when its data is at hand. Buffers belong to the daemon's pools and
 * are valid only until that request's reply.
 */
export type BatchHandler = (nums: Float64Array, extras: Array<string | Buffer | undefined>) => void;

export interface Fuse3Addon {
  mount(mountpoint: string, args: string[], onBatch: BatchHandler, readers: number): NativeSession;
  replyErr(s: NativeSession, id: number, errno: number): boolean;
  replyEntry(s: NativeSession, id: number, attr: Float64Array, entryTimeout: number, attrTimeout: number): boolean;
  replyAttr(s: NativeSession, id: number, attr: Float64Array, attrTimeout: number): boolean;
  replyOpen(s: NativeSession, id: number, fh: number, flags: number): boolean;
  replyRead(s: NativeSession, id: number, bytes: number): boolean;
  replyWrite(s: NativeSession, id: number, bytes: number): boolean;
  replyStatfs(s: NativeSession, id: number, values: number[]): boolean;
  replyDir(s: NativeSession, id: number, names: string[], inos: number[], modes: number[], first: number): boolean;
  /** The offset an lseek(SEEK_DATA | SEEK_HOLE) found. */
  replyLseek(s: NativeSession, id: number, offset: number): boolean;
  /**
   * End our own session: umount(2) of our mount if it is the top one at the mount point
   * (EBUSY while in use), else (umount -l'd, or covered by a later mount) abort our FUSE
   * connection and return ENDED_BY_ABORT. Never touches another mount. 0, ENDED_BY_ABORT
   * or the errno.
   */
  unmount(s: NativeSession, lazy: boolean): number;
  close(s: NativeSession): void;
  /** [requests, inFlight, maxInFlight, fastOn, fastReads, fastWrites, fastReadBytes, fastWriteBytes, fastSyncs] */
  stats(s: NativeSession, resetMax: boolean): [number, number, number, number, number, number, number, number, number];
  /** The buffer read `id` is answered from (at least `length` bytes); null once the read is answered. */
  readBuffer(s: NativeSession, id: number, length: number): Buffer | null;
  /** Publish the fast path's shared state (native/fuse3/fastpath.h); once per session. */
  fastAttach(
    s: NativeSession, header: Int32Array, marks: Uint8Array, cbt: Uint8Array, originFd: number,
    originIno: number, originSize: number, chunkSize: number, blockSize: number, writable: boolean,
  ): void;
  /** Switch the fast path off; returns the fast requests still inside (FAST_DRAINED news when none is left). */
  fastStop(s: NativeSession): number;
  /** Close the addon's origin descriptor: 0, or EBUSY while fast requests are inside. */
  fastRelease(s: NativeSession): number;
  /** [begun, ended, pages] of the fast path's origin writes, `ended` read first. */
  fastTally(s: NativeSession): [number, number, number];
}

const ADDON_PATH = fileURLToPath(new URL('../../../../build/Release/blksnapfs_fuse3.node', import.meta.url));

let loaded: Fuse3Addon | null = null;

export function loadAddon(): Fuse3Addon {
  if (loaded !== null) return loaded;
  if (!existsSync(ADDON_PATH)) {
    throw BlksnapError.of('ENOENT', `the libfuse 3 addon is not built (${ADDON_PATH}); run npm run setup, or mount with -o transport=fuse-native`);
  }
  const require = createRequire(import.meta.url);
  loaded = require(ADDON_PATH) as Fuse3Addon;
  return loaded;
}
