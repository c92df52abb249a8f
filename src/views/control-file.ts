/**
 * /control: one command per line. A write runs its commands in order and fails with
 * the first failing command's errno (EINVAL for a command it does not know); the
 * commands before it have run.
 */
import { BlksnapError } from '../errors.js';
import { parseSize } from '../sizes.js';
import type { FileView, IoRequest, RequestContext } from './file-view.js';

export interface ControlCommands {
  /** `ctx` is the caller: only root may append storage (see the interface contract). */
  storageAppend(path: string, size: number, ctx: RequestContext): Promise<void>;
  cbtDirty(offset: number, length: number): void;
  /** Returns once the origin is frozen (new writes held, those in flight finished). */
  freeze(milliseconds: number): Promise<void>;
  thaw(): void;
}

function parseInteger(what: string, text: string | undefined): number {
  if (text === undefined || !/^\d+$/.test(text)) throw BlksnapError.of('EINVAL', `${what} must be a whole number of bytes`);
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw BlksnapError.of('EINVAL', `${what} is too large`);
  return n;
}

export async function runControlLine(line: string, commands: ControlCommands, ctx: RequestContext): Promise<void> {
  const words = line.trim().split(/\s+/);
  const [verb, ...args] = words;
  switch (verb) {
    case 'storage-append': {
      const [path, size] = args;
      if (args.length !== 2 || path === undefined || size === undefined) throw BlksnapError.of('EINVAL', 'usage: storage-append PATH SIZE');
      await commands.storageAppend(path, parseSize(size), ctx);
      return;
    }
    case 'cbt-dirty': {
      if (args.length !== 2) throw BlksnapError.of('EINVAL', 'usage: cbt-dirty OFFSET LENGTH');
      commands.cbtDirty(parseInteger('OFFSET', args[0]), parseInteger('LENGTH', args[1]));
      return;
    }
    case 'freeze': {
      const [ms] = args;
      if (args.length !== 1 || ms === undefined || !/^\d{1,9}$/.test(ms)) throw BlksnapError.of('EINVAL', 'usage: freeze MILLISECONDS');
      await commands.freeze(Number(ms));
      return;
    }
    case 'thaw': {
      if (args.length !== 0) throw BlksnapError.of('EINVAL', 'usage: thaw');
      commands.thaw();
      return;
    }
    default:
      throw BlksnapError.of('EINVAL', `unknown command "${verb ?? ''}"`);
  }
}

export class ControlFile implements FileView {
  constructor(private readonly commands: ControlCommands) {}

  read(): Promise<number> {
    return Promise.reject(BlksnapError.of('EACCES', '/control is write-only'));
  }

  async write(buf: Buffer, length: number, _position: number, req: IoRequest): Promise<number> {
    const text = buf.toString('utf8', 0, length);
    for (const line of text.split('\n')) {
      if (line.trim().length > 0) await runControlLine(line, this.commands, req.ctx);
    }
    return length;
  }

  async fsync(): Promise<void> {}

  release(): void {}
}
