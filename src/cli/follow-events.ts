/**
 * Following MOUNT/events from Node. The file answers a read that waited about a second
 * for an event with EINTR (so that a killed reader can leave, see
 * src/views/events-file.ts); cat and Python retry that by themselves, but libuv does
 * not retry interrupted reads, so fs streams would stop with an error. This reader
 * retries EINTR and yields whole lines.
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';

const READ_SIZE = 64 * 1024;

/** Each line of MOUNT/events (without its newline), until `signal` aborts or the file ends. */
export async function* followEvents(mount: string, signal?: AbortSignal): AsyncGenerator<string> {
  const fh = await fsp.open(join(mount, 'events'), 'r');
  try {
    const buf = Buffer.alloc(READ_SIZE);
    let partial = '';
    while (signal?.aborted !== true) {
      let n: number;
      try {
        ({ bytesRead: n } = await fh.read(buf, 0, buf.length, null));
      } catch (err) {
        if ((err as { code?: string }).code === 'EINTR') continue;
        throw err;
      }
      if (n === 0) break;
      partial += buf.toString('utf8', 0, n);
      let nl: number;
      while ((nl = partial.indexOf('\n')) >= 0) {
        yield partial.slice(0, nl);
        partial = partial.slice(nl + 1);
      }
    }
  } finally {
    await fh.close();
  }
}
