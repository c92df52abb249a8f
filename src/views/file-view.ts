/**
 * What an open file is. Each open returns one of these, held in the handle table; all
 * reads, writes and the release go to it by handle, never by path, so a file whose
 * name has gone (rmdir of its snapshot) keeps working until it is closed.
 */
export interface FileView {
  /** Fill buf[0, length) from `position`; return how many bytes (0 at end of file). */
  read(buf: Buffer, length: number, position: number): Promise<number>;
  /** Write buf[0, length) at `position`; return how many bytes were written. */
  write(buf: Buffer, length: number, position: number): Promise<number>;
  fsync(): Promise<void>;
  release(): void;
}

/** Clamp a read to the end of a fixed-size file: block-device semantics. */
export function clampRead(size: number, length: number, position: number): number {
  if (position >= size) return 0;
  return Math.min(length, size - position);
}
