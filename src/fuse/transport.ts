/**
 * The transport seam: a FUSE binding that serves a FileSystem (src/views/filesystem.ts)
 * at a mount point. Two live behind it:
 * - libfuse3 (the default): our N-API addon on libfuse 3's low-level API; many requests
 *   in flight, 1 MiB requests, node ids, the caller of each request, interrupts, a
 *   session whose end the kernel tells us, and a native fast path that serves origin
 *   requests needing nothing from the engine in C (attachFastPath).
 * - fuse-native (compatibility): libfuse 2's high-level path API; one request at a
 *   time, 128 KiB requests, no caller, no interrupts, and the end of the session
 *   noticed by watching /proc/self/mountinfo. Kept for machines without libfuse 3.
 */
import type { FileSystem } from '../views/filesystem.js';
import type { Logger } from '../engine/logger.js';

export const TRANSPORTS = ['libfuse3', 'fuse-native'] as const;
export type TransportName = (typeof TRANSPORTS)[number];

export interface MountConfig {
  mountpoint: string;
  /** What /proc/mounts shows as the source: the origin's path. */
  fsname: string;
  allowOther: boolean;
}

/** Origin requests served natively, without entering JavaScript. */
export interface FastPathStats {
  enabled: boolean;
  reads: number;
  writes: number;
  read_bytes: number;
  write_bytes: number;
  syncs: number;
}

export interface TransportStats {
  transport: TransportName;
  /** Requests received since the mount. */
  requests: number;
  /** Requests received and not yet answered. */
  in_flight: number;
  /** The most requests in flight at once since the mount. */
  max_in_flight: number;
  /** Whether each request carries its caller (uid, gid, pid). */
  credentials: boolean;
  fast_path: FastPathStats;
}

/**
 * What the native fast path serves from (src/engine/fast-path-state.ts owns and
 * explains it): the shared header and chunk marks, the change map, and how to reach
 * the origin.
 */
export interface FastPathSpec {
  header: Int32Array;
  marks: Uint8Array;
  cbt: Uint8Array;
  originFd: number;
  /** The node id of /origin: the only node served natively. */
  originIno: number;
  originSize: number;
  chunkSize: number;
  blockSize: number;
  writable: boolean;
  /** A native writer left the closed write gate empty: whoever waits for it looks again. */
  onDrained(): void;
}

/** The transport's handle on a running fast path. */
export interface NativeFastPath {
  /** Stop serving natively; resolves once no native request is inside and the origin descriptor is closed. */
  stop(): Promise<void>;
  /**
   * Its origin writes so far, as src/engine/origin-write-accounting.ts counts them:
   * `begun` (and `pages`) before each pwrite, `ended` after it; `ended` is read first.
   */
  writes(): { begun: number; ended: number; pages: number };
}

export interface FuseSession {
  readonly transport: TransportName;
  /**
   * Resolves when the session is over: after umount (or umount -l and the last close),
   * or when the connection is aborted. The daemon's shutdown starts here.
   */
  readonly ended: Promise<void>;
  /**
   * End the session: unmount our mount (EBUSY while something uses it). libfuse3 acts
   * only on its own mount: if another file system is now at (or over) the mount point,
   * it ends the session without unmounting anything. fuse-native runs `fusermount -u`
   * on the path.
   */
  unmount(): Promise<void>;
  /** After `ended` and the daemon's own shutdown: stop the transport's threads. */
  close(): Promise<void>;
  stats(): TransportStats;
  /** Serve origin requests that need nothing from the engine natively (absent where the transport cannot: fuse-native). */
  attachFastPath?(spec: FastPathSpec): NativeFastPath;
}

export interface Transport {
  readonly name: TransportName;
  mount(fs: FileSystem, config: MountConfig, log: Logger): Promise<FuseSession>;
}

/** libfuse escapes commas in option values with a backslash. */
export function escapeOptionValue(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/,/g, '\\,');
}
