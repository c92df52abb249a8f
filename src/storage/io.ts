/**
 * Full-length positional reads and writes. The kernel may return fewer bytes than
 * asked; a short count here is looped over, and a read that meets end-of-file early is
 * an error with a code, never silently fewer bytes.
 *
 * They go through fs.read/fs.write on the descriptor, not FileHandle's methods: on this
 * hot path (every origin read and write) the callback API costs about a quarter less per
 * call (4 KiB at queue depth 16 on this kind of machine: 70-92k vs 57-74k writes/s).
 */
import { read, write, type promises } from 'node:fs';
import { BlksnapError } from '../errors.js';

type Handle = promises.FileHandle;

function readOnce(fd: number, buf: Buffer, offset: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    read(fd, buf, offset, length, position, (err, n) => (err ? reject(err) : resolve(n)));
  });
}

function writeOnce(fd: number, buf: Buffer, offset: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    write(fd, buf, offset, length, position, (err, n) => (err ? reject(err) : resolve(n)));
  });
}

export async function readFully(file: Handle, buf: Buffer, offset: number, length: number, position: number): Promise<void> {
  let done = 0;
  while (done < length) {
    const bytesRead = await readOnce(file.fd, buf, offset + done, length - done, position + done);
    if (bytesRead === 0) {
      throw BlksnapError.of('EIO', `short read: ${done} of ${length} bytes at ${position}`);
    }
    done += bytesRead;
  }
}

export async function writeFully(file: Handle, buf: Buffer, offset: number, length: number, position: number): Promise<void> {
  let done = 0;
  while (done < length) {
    const bytesWritten = await writeOnce(file.fd, buf, offset + done, length - done, position + done);
    if (bytesWritten === 0) {
      throw BlksnapError.of('EIO', `short write: ${done} of ${length} bytes at ${position}`);
    }
    done += bytesWritten;
  }
}
