/**
 * Full-length positional reads and writes. The kernel may return fewer bytes than
 * asked; a short count here is looped over, and a read that meets end-of-file early is
 * an error with a code, never silently fewer bytes.
 */
import type { promises } from 'node:fs';
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

