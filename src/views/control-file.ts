/**
 * /control: one command per line (see the interface contract). Lines are assembled per
 * open file across write() calls (control-lines.ts) and split into words, a PATH
 * possibly written as a JSON string (control-parse.ts); a command runs when its newline
 * arrives, or at the last close for a last line without one, never a part of one.
 *
 * A write runs the lines it completes in order and fails with the first failure: EINVAL
 * for a line that does not parse (it ran nothing), else the failed command's errno. The
 * lines before it have run; the rest of that write is dropped, including the rest of a
 * line it left unfinished (up to that line's newline). Writes to one open file are run
 * one after another, in the order they arrived.
 */
import { BlksnapError } from '../errors.js';
import { parseSize } from '../sizes.js';
import type { Logger } from '../engine/logger.js';
import { FREEZE_TOKEN } from '../engine/origin-freeze.js';
import { type CompletedLine, LineAssembler, MAX_LINE_BYTES } from './control-lines.js';
import { splitWords } from './control-parse.js';
import type { FileView, IoRequest, RequestContext } from './file-view.js';

export interface ControlCommands {
  /** `ctx` is the caller: only root may append storage (see the interface contract). */
  storageAppend(path: string, size: number, ctx: RequestContext): Promise<void>;
  cbtDirty(offset: number, length: number): void;
  /** Returns once the origin is frozen (new writes held, those in flight finished). */
  freeze(milliseconds: number, token: string | null): Promise<void>;
  /** ESTALE when `token` names no current freeze (origin-freeze.ts). */
  thaw(token: string | null): void;
}

function parseInteger(what: string, text: string | undefined): number {
  if (text === undefined || !/^\d+$/.test(text)) throw BlksnapError.of('EINVAL', `${what} must be a whole number of bytes`);
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw BlksnapError.of('EINVAL', `${what} is too large`);
  return n;
}

/** A freeze's TOKEN, or null when the line has none. */
function parseToken(text: string | undefined): string | null {
  if (text === undefined) return null;
  if (!FREEZE_TOKEN.test(text)) throw BlksnapError.of('EINVAL', 'a freeze TOKEN is 1-64 of A-Z a-z 0-9 . _ -');
  return text;
}

export async function runControlLine(line: string, commands: ControlCommands, ctx: RequestContext): Promise<void> {
  const words = splitWords(line);
  if (words.length === 0) return; // a blank line
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
      const [ms, token] = args;
      if (args.length < 1 || args.length > 2 || ms === undefined || !/^\d{1,9}$/.test(ms)) throw BlksnapError.of('EINVAL', 'usage: freeze MILLISECONDS [TOKEN]');
      await commands.freeze(Number(ms), parseToken(token));
      return;
    }
    case 'thaw': {
      if (args.length > 1) throw BlksnapError.of('EINVAL', 'usage: thaw [TOKEN]');
      commands.thaw(parseToken(args[0]));
      return;
    }
    default:
      throw BlksnapError.of('EINVAL', `unknown command "${verb ?? ''}"`);
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function lineText(line: CompletedLine): string {
  if (line.kind === 'too-long') throw BlksnapError.of('EINVAL', `a /control line is longer than ${MAX_LINE_BYTES} bytes`);
  try {
    return utf8.decode(line.bytes);
  } catch {
    throw BlksnapError.of('EINVAL', 'a /control line is not valid UTF-8');
  }
}

export class ControlFile implements FileView {
  private readonly lines = new LineAssembler();
  /** The caller of the write that left the current line unfinished: it runs that line at close. */
  private partialLineCaller: RequestContext | null = null;
  /** Writes, and the run at close, one after another in arrival order. */
  private queue: Promise<unknown> = Promise.resolve();

  /** `log` hears of a last line that failed at release, when nobody can be told. */
  constructor(private readonly commands: ControlCommands, private readonly log: Logger | null = null) {}

  read(): Promise<number> {
    return Promise.reject(BlksnapError.of('EACCES', '/control is write-only'));
  }

  write(buf: Buffer, length: number, _position: number, req: IoRequest): Promise<number> {
    // Copied now: the request's buffer may be reused once an earlier write's command returns.
    const data = Buffer.from(buf.subarray(0, length));
    return this.serially(async () => {
      const completed = this.lines.push(data);
      if (this.lines.holdsPartialLine) this.partialLineCaller = req.ctx;
      try {
        for (const line of completed) await runControlLine(lineText(line), this.commands, req.ctx);
      } catch (err) {
        this.lines.abandonCurrentLine();
        this.partialLineCaller = null;
        throw err;
      }
      return length;
    });
  }

  async fsync(): Promise<void> {}

  /**
   * After the last close: a last line without a newline runs now, and only the log can
   * hear how it went. Not at FUSE FLUSH, though that could report to close(): FLUSH comes
   * at every close of every descriptor of the open file, and a child process that
   * inherits one closes it at exec (O_CLOEXEC), so a line could run while its writer
   * still had the rest of it to write.
   */
  release(): void {
    void this.serially(() => this.runLastLine()).catch((err: unknown) => {
      this.log?.warn({ err: err instanceof Error ? err.message : String(err) }, '/control: the last line, run at close, failed');
    });
  }

  private async runLastLine(): Promise<void> {
    const last = this.lines.finish();
    const caller = this.partialLineCaller;
    this.partialLineCaller = null;
    if (last === null || caller === null) return;
    await runControlLine(lineText(last), this.commands, caller);
  }

  private serially<T>(work: () => Promise<T>): Promise<T> {
    const run = this.queue.then(work, work);
    this.queue = run.catch(() => undefined);
    return run;
  }
}
