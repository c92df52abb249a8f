/**
 * blksnapfs's mark on the difference-storage files it makes: a header block at offset 0.
 * A file that carries it may be reused by a later mount (a file left behind by a crash,
 * or an empty file the user handed us, which we filled); any other non-empty file is
 * somebody's data and is never touched.
 *
 * Why a header rather than an xattr (`user.blksnapfs`): it works on every file system
 * that can hold the storage at all (tmpfs on older kernels, NFS, FUSE file systems such
 * as the tests' fault-injection one have no user xattrs, or not reliably), it travels
 * with the file's bytes (cp, rsync without -X), and checking it is one read. The cost is
 * one block: the allocator starts the file's slots after it (`HEADER_BYTES`), so the
 * header is never handed out as a slot.
 */
import type { promises as fsp } from 'node:fs';
import { DIRECT_IO_ALIGNMENT, allocAligned } from './aligned.js';

/** The header's size: one direct-I/O block, so the slots after it stay aligned. */
export const HEADER_BYTES = DIRECT_IO_ALIGNMENT;

const MAGIC = Buffer.from('blksnapfs difference storage, format 1\n', 'latin1');

/** Write the mark (the file is open with O_DIRECT). */
export async function writeMark(file: fsp.FileHandle): Promise<void> {
  const block = allocAligned(HEADER_BYTES);
  block.fill(0);
  MAGIC.copy(block);
  const { bytesWritten } = await file.write(block, 0, HEADER_BYTES, 0);
  if (bytesWritten !== HEADER_BYTES) throw new Error(`short write of the difference-storage header (${bytesWritten} bytes)`);
}

/** True when the file (open with O_DIRECT, `size` bytes long) carries the mark. */
export async function hasMark(file: fsp.FileHandle, size: number): Promise<boolean> {
  if (size < HEADER_BYTES) return false;
  const block = allocAligned(HEADER_BYTES);
  const { bytesRead } = await file.read(block, 0, HEADER_BYTES, 0);
  return bytesRead === HEADER_BYTES && block.subarray(0, MAGIC.length).equals(MAGIC);
}
