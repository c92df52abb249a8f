/**
 * Shared steps of the phases: one measurement (cold page cache, then the tool), and
 * a session per system that turns a failure into "n/a: why" on the rows it owed
 * instead of losing the whole run.
 */
import type { Ctx } from '../lib/context.js';
import type { System } from '../lib/results.js';
import { dropCaches } from '../lib/tools.js';
import type { Blksnapfs } from '../lib/blksnapfs.js';
import { DaemonProbe } from '../lib/daemon-probe.js';
import { stopping } from '../lib/proc.js';

export const failures: string[] = [];

/**
 * Drop the page cache, run `work`, record its number. With `daemon`, also record what
 * that blksnapfs daemon did meanwhile (requests, requests in flight, CPU).
 */
export async function measure(ctx: Ctx, id: string, system: System, work: () => Promise<number>, daemon?: Blksnapfs): Promise<number> {
  await dropCaches();
  const probe = daemon === undefined ? null : await DaemonProbe.start(daemon);
  const value = await work();
  if (probe !== null) ctx.rec.daemon(id, system, await probe.stop());
  ctx.rec.add(id, system, value);
  return value;
}

/**
 * Run one system's part of a repetition. On failure, every row in `owes` that has no
 * value for `system` yet is marked n/a with the error, and the run goes on.
 */
export async function session(ctx: Ctx, system: System, owes: readonly string[], work: (scope: Scope) => Promise<void>): Promise<void> {
  if (system === 'qsd' && ctx.qsdUnavailable !== null) {
    for (const id of owes) ctx.rec.na(id, system, ctx.qsdUnavailable);
    return;
  }
  const scope = new Scope();
  try {
    await work(scope);
  } catch (err) {
    if (stopping.now) throw err; // Ctrl-C: no n/a cells, just out
    const message = err instanceof Error ? err.message : String(err);
    ctx.log(`  ${system} failed: ${message}`);
    failures.push(`${system}: ${message}`);
    for (const id of owes) if (ctx.rec.get(id, system) === null) ctx.rec.na(id, system, `failed: ${message.slice(0, 200)}`);
  } finally {
    await scope.close();
  }
}

interface Stoppable {
  stop(): Promise<void>;
}

/** The mounts and daemons one session started; stopped when the session ends, whatever happened. */
export class Scope {
  private readonly held: Stoppable[] = [];

  track<T extends Stoppable>(thing: T): T {
    this.held.push(thing);
    return thing;
  }

  async close(): Promise<void> {
    for (let t = this.held.pop(); t !== undefined; t = this.held.pop()) await t.stop();
  }
}
