/**
 * What an open file is. Each open returns one of these, held in the handle table; all
 * reads, writes and the release go to it by handle, never by path, so a file whose
 * name has gone (rmdir of its snapshot) keeps working until it is closed.
 */
import type { SeekWhat } from './sparse.js';

/**
 * Who is calling. The libfuse 3 transport fills it from the request; a transport that
 * cannot tell (fuse-native) says `known: false`, and whatever needs to know the caller
 * (root-only commands) must then refuse unless the mount's owner is root.
 */
export interface RequestContext {
  readonly uid: number;
  readonly gid: number;
  readonly pid: number;
  readonly known: boolean;
}

/** One read or write request as the views see it: its caller, and its interruption. */
export interface IoRequest {
  readonly ctx: RequestContext;
  /**
   * Call `listener` once if the caller gives up on the request (FUSE INTERRUPT: the
   * process was killed or the call was interrupted). The request must still be
   * answered; the listener only lets a long wait (an /events read) end at once.
   */
  onInterrupt(listener: () => void): void;
  /** Whether onInterrupt ever fires on this transport (fuse-native cannot tell). */
  readonly interruptible: boolean;
}

/** A request from nobody in particular (engine-side callers, tests, old transports). */
export const ANONYMOUS: IoRequest = {
  ctx: { uid: -1, gid: -1, pid: 0, known: false },
  onInterrupt: () => undefined,
  interruptible: false,
};

/**
 * Where a read's bytes go: call it once, when the data is at hand, with how many bytes
 * will be written (at most the read's length), for a buffer of at least that size. A
 * read that waits (an /events reader) asks only after its wait, so a waiting read holds
 * no buffer (the libfuse 3 transport hands out daemon memory only then).
 */
export type ReadTarget = (length: number) => Buffer;

export interface FileView {
  /** Read at most `length` bytes from `position` into `into(n)`; return n (0 at end of file). */
  read(into: ReadTarget, length: number, position: number, req: IoRequest): Promise<number>;
  /** Write buf[0, length) at `position`; return how many bytes were written. */
  write(buf: Buffer, length: number, position: number, req: IoRequest): Promise<number>;
  /** close(2) of a descriptor of this open file; its errors reach the caller of close. */
  flush?(req: IoRequest): Promise<void>;
  /**
   * lseek SEEK_DATA / SEEK_HOLE (sparse.ts): the offset found; ENXIO when there is none
   * or `offset` is at or past the end. Absent: the file has no holes.
   */
  seek?(offset: number, what: SeekWhat): Promise<number>;
  /** fallocate(2) with its mode bits (sparse.ts `checkFallocate`). Absent: EOPNOTSUPP. */
  fallocate?(mode: number, offset: number, length: number): Promise<void>;
  fsync(): Promise<void>;
  release(): void;
}

/** Clamp a read to the end of a fixed-size file: block-device semantics. */
export function clampRead(size: number, length: number, position: number): number {
  if (position >= size) return 0;
  return Math.min(length, size - position);
}
