/**
 * Full-length positional reads and writes. The kernel may return fewer bytes than
 * asked; a short count here is looped over, and a read that meets end-of-file early is
 * an error with a code, never silently fewer bytes.
 */
import { promises as fsp, writeSync, type promises } from 'node:fs';
import { BlksnapError } from '../errors.js';

type Handle = promises.FileHandle;

export async function readFully(file: Handle, buf: Buffer, offset: number, length: number, position: number): Promise<void> {
  let done = 0;
  while (done < length) {
    const { bytesRead } = await file.read(buf, offset + done, length - done, position + done);
    if (bytesRead === 0) {
      throw BlksnapError.of('EIO', `short read: ${done} of ${length} bytes at ${position}`);
    }
    done += bytesRead;
  }
}

export async function writeFully(file: Handle, buf: Buffer, offset: number, length: number, position: number): Promise<void> {
  let done = 0;
  while (done < length) {
    const { bytesWritten } = await file.write(buf, offset + done, length - done, position + done);
    if (bytesWritten === 0) {
      throw BlksnapError.of('EIO', `short write: ${done} of ${length} bytes at ${position}`);
    }
    done += bytesWritten;
  }
}

/**
 * The same, synchronously, on a raw descriptor: for writes that land in the page cache
 * (the origin), where the thread-pool round trip of an asynchronous write costs more
 * than the write itself. The caller gives up the event loop for the length of the
 * write(2); see OriginDevice.write for why that is the right trade there.
 */
export function writeFullySync(fd: number, buf: Buffer, offset: number, length: number, position: number): void {
  let done = 0;
  while (done < length) {
    const n = writeSync(fd, buf, offset + done, length - done, position + done);
    if (n === 0) throw BlksnapError.of('EIO', `short write: ${done} of ${length} bytes at ${position}`);
    done += n;
  }
}

export { fsp };
