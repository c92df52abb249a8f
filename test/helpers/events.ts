/**
 * Following MOUNT/events the way users do: a real `cat` process, spawned in its own
 * process group (killed with everything it started at teardown), whose output is
 * collected line by line. Plus /control writes that report the errno they got.
 */
import type { ExecutionContext } from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { errnoNameOf } from '../../src/errors.js';

export interface EventLine {
  seq?: number;
  time: string;
  type: string;
  [field: string]: unknown;
}

/** Start a process in its own process group; the whole group is SIGKILLed at teardown. */
export function spawnGroup(t: ExecutionContext, cmd: string, args: string[]): ChildProcess {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  t.teardown(() => {
    if (child.pid !== undefined) {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });
  return child;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A running `cat MOUNT/events` and everything it printed so far. */
export class EventTail {
  readonly lines: EventLine[] = [];
  readonly child: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stderr = '';
  private partial = '';
  private readonly listeners = new Set<() => void>();

  constructor(t: ExecutionContext, mnt: string, cmd: string[] = ['cat', join(mnt, 'events')]) {
    const [file, ...args] = cmd;
    this.child = spawnGroup(t, file ?? 'cat', args);
    this.child.stdout?.on('data', (d: Buffer) => {
      this.partial += d.toString('utf8');
      let nl: number;
      while ((nl = this.partial.indexOf('\n')) >= 0) {
        this.lines.push(JSON.parse(this.partial.slice(0, nl)) as EventLine);
        this.partial = this.partial.slice(nl + 1);
      }
      for (const l of [...this.listeners]) l();
    });
    this.child.stderr?.on('data', (d: Buffer) => (this.stderr += d.toString('utf8')));
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => resolve({ code, signal })));
  }

  /** Lines of one type (optionally for one snapshot). */
  of(type: string, snapshot?: string): EventLine[] {
    return this.lines.filter((e) => e.type === type && (snapshot === undefined || e['snapshot'] === snapshot));
  }

  /** Wait until `pred` holds for some line; fail after `timeoutMs`. */
  async waitFor(what: string, pred: (e: EventLine) => boolean, timeoutMs = 5000): Promise<EventLine> {
    const found = (): EventLine | undefined => this.lines.find(pred);
    const now = found();
    if (now !== undefined) return now;
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const e = found();
        if (e === undefined) return;
        done();
        resolve(e);
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`no event "${what}" within ${timeoutMs} ms; got:\n${this.lines.map((l) => JSON.stringify(l)).join('\n')}\nstderr: ${this.stderr}`));
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        this.listeners.delete(check);
      };
      this.listeners.add(check);
    });
  }

  waitType(type: string, snapshot?: string, timeoutMs?: number): Promise<EventLine> {
    return this.waitFor(`${type}${snapshot === undefined ? '' : ` ${snapshot}`}`,
      (e) => e.type === type && (snapshot === undefined || e['snapshot'] === snapshot), timeoutMs);
  }
}

/** Write one command to MOUNT/control; null on success, else the errno name it failed with. */
export async function control(mnt: string, line: string): Promise<string | null> {
  try {
    await fsp.writeFile(join(mnt, 'control'), `${line}\n`);
    return null;
  } catch (err) {
    return errnoNameOf(err);
  }
}

/** seqs of the lines that have one, in order. */
export function seqs(lines: EventLine[]): number[] {
  return lines.flatMap((e) => (typeof e.seq === 'number' ? [e.seq] : []));
}
