/**
 * Where the daemon's log lines go: a file (-o log=PATH) or stderr, written
 * synchronously, and best effort.
 *
 * The log is written from inside the daemon's critical sections (a snapshot just
 * numbered, a name just removed, a copy just failed). pino's own synchronous destination
 * throws when a write fails, e.g. when the log's file system is full, and that throw
 * would land in the middle of a take or a destroy. This destination never throws from
 * `write`: a line that cannot be written is dropped and counted.
 *
 * The first failure is reported once: a line on stderr, and each listener given to
 * `onFailure` (the daemon turns it into a `log-failed` event), called in a microtask so
 * that it never runs inside the log call that failed. Writing goes on being tried; when
 * a line gets through again, a `log lines lost` line with the count comes first, so
 * the log says where its gap is.
 */
import { mkdirSync, openSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { errnoNameOf, type ErrnoName } from '../errors.js';

export interface LogFailure {
  error: ErrnoName;
  message: string;
}

/** pino's number for `warn`, for the line this destination writes itself. */
const WARN = 40;
/** A full pipe on stderr: tries before the line counts as lost. */
const EAGAIN_TRIES = 20;
const pause = new Int32Array(new SharedArrayBuffer(4));

export class BestEffortDestination {
  private failure: LogFailure | null = null;
  private readonly listeners: Array<(f: LogFailure) => void> = [];
  /** Lines dropped since the last line that got through. */
  private lost = 0;
  /** The last failed write stopped inside a line (a partial write). */
  private midLine = false;

  private constructor(private readonly fd: number, readonly name: string) {}

  /** The log file, created (with its directory) if needed; throws if it cannot be opened. */
  static toFile(path: string): BestEffortDestination {
    mkdirSync(dirname(path), { recursive: true });
    return new BestEffortDestination(openSync(path, 'a'), path);
  }

  static toStderr(): BestEffortDestination {
    return new BestEffortDestination(2, 'stderr');
  }

  /** The first failure, once it has happened. */
  get failed(): LogFailure | null {
    return this.failure;
  }

  get linesLost(): number {
    return this.lost;
  }

  /** Called once with the first failure (at once, in a microtask, if it has happened already). */
  onFailure(listener: (f: LogFailure) => void): void {
    const failure = this.failure;
    if (failure !== null) queueMicrotask(() => listener(failure));
    else this.listeners.push(listener);
  }

  /** pino's stream interface. Never throws. */
  write(line: string): void {
    try {
      if (this.lost > 0) {
        const note = { level: WARN, time: new Date().toISOString(), pid: process.pid, lost: this.lost, msg: 'log lines lost' };
        this.writeAll(`${this.midLine ? '\n' : ''}${JSON.stringify(note)}\n`);
        this.lost = 0;
        this.midLine = false;
      }
      this.writeAll(line);
    } catch (err) {
      this.lost++;
      this.fail(err);
    }
  }

  private writeAll(text: string): void {
    const bytes = Buffer.from(text, 'utf8');
    let done = 0;
    let again = 0;
    while (done < bytes.length) {
      try {
        done += writeSync(this.fd, bytes, done, bytes.length - done);
      } catch (err) {
        if (errnoNameOf(err) === 'EAGAIN' && ++again < EAGAIN_TRIES) {
          Atomics.wait(pause, 0, 0, 1); // a millisecond for the reader of a full pipe
          continue;
        }
        this.midLine ||= done > 0;
        throw err;
      }
    }
  }

  private fail(err: unknown): void {
    if (this.failure !== null) return;
    const failure: LogFailure = { error: errnoNameOf(err), message: `cannot write the log (${this.name}): ${err instanceof Error ? err.message : String(err)}` };
    this.failure = failure;
    try {
      writeSync(2, `blksnapfs: ${failure.message}; logging goes on, best effort\n`);
    } catch {
      // stderr is gone as well
    }
    const listeners = this.listeners.splice(0);
    for (const listener of listeners) {
      queueMicrotask(() => {
        try {
          listener(failure);
        } catch {
          // a listener's trouble is not the log's
        }
      });
    }
  }
}
