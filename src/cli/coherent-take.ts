/**
 * `blksnapfs snapshot take MOUNT [MOUNT...] NAME [--fsfreeze DIR]...`: one coherent
 * snapshot of several origins, as blksnap takes all devices of a snapshot under one
 * freeze:
 *
 *   fsfreeze -f each DIR -> `freeze MS` on every mount -> mkdir NAME on every mount
 *   -> `thaw` every mount -> fsfreeze -u each DIR
 *
 * With every mount frozen before the first mkdir and thawed after the last, no image of
 * the set can hold a write that began after another write was acknowledged unless it
 * holds that one too. The order is fixed by what each step needs: a file system's
 * freeze flushes its dirty data through the mount, so it comes before the mount's
 * freeze, and its thaw after.
 *
 * Every thaw runs on every path: errors, and SIGINT/SIGTERM/SIGHUP, which are only
 * noted while the set is being taken (the steps in progress finish, then everything is
 * undone). Only SIGKILL can skip them: then the mounts thaw at their deadline, but a
 * frozen file system stays frozen until `fsfreeze -u`. If any step fails, the snapshots
 * of the set already taken are destroyed and the whole command fails. A mount whose
 * freeze ran out before its thaw (`thaw` answers EINVAL) fails the set too: the cut
 * may not have been one point in time.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, realpath } from 'node:fs/promises';
import { asBlksnapError, BlksnapError, errnoNameOf } from '../errors.js';
import { SNAPSHOT_NAME } from '../engine/snapshot.js';
import { destroySnapshot, readInfo, readStatus, sendControl, takeSnapshot, type InfoDoc } from './client.js';

/** How long each mount may stay frozen unless thawed (the daemon's cap is 60000). */
export const DEFAULT_FREEZE_MS = 10_000;

export interface SetRequest {
  mounts: string[];
  name: string;
  fsfreeze: string[];
  freezeMs: number;
}

export interface SetMember {
  mount: string;
  info: InfoDoc;
}

const SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/** Notes the termination signals instead of dying of them, for as long as it is installed. */
class SignalLatch {
  signal: NodeJS.Signals | null = null;
  private readonly onSignal = (s: NodeJS.Signals): void => {
    this.signal ??= s;
  };

  install(): void {
    for (const s of SIGNALS) process.on(s, this.onSignal);
  }

  remove(): void {
    for (const s of SIGNALS) process.off(s, this.onSignal);
  }

  check(): void {
    if (this.signal !== null) throw BlksnapError.of('EINTR', `interrupted by ${this.signal}`);
  }
}

/**
 * fsfreeze in its own process group: a Ctrl-C meant for us must not kill it halfway,
 * leaving us unsure whether the file system is frozen.
 */
function fsfreeze(flag: '-f' | '-u', dir: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('fsfreeze', [flag, dir], { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    child.on('error', (err) => reject(asBlksnapError(err, `cannot run fsfreeze ${flag} ${dir}`)));
    child.on('close', (code) => {
      if (code === 0) resolve();
      else reject(new Error(`fsfreeze ${flag} ${dir} failed: ${stderr.trim().replace(/^fsfreeze: /, '') || `exit status ${String(code)}`}`));
    });
  });
}

/** Run `step` on every item at once; return the items it succeeded on and the first failure. */
async function eachAtOnce<T>(items: T[], step: (item: T) => Promise<void>): Promise<{ done: T[]; failure: unknown }> {
  const results = await Promise.allSettled(items.map(step));
  const done = items.filter((_, i) => results[i]?.status === 'fulfilled');
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  return { done, failure: failed === undefined ? null : failed.reason };
}

/** The mount points of this mount namespace, unescaped (mountinfo writes a space as \\040). */
async function mountPointsNow(): Promise<Set<string>> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const unescape = (p: string): string => p.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)));
  return new Set(text.split('\n').flatMap((line) => {
    const field = line.split(' ')[4];
    return field === undefined ? [] : [unescape(field)];
  }));
}

/** The mounts and --fsfreeze directories, resolved and checked before anything is frozen. */
async function checkRequest(req: SetRequest): Promise<{ mounts: string[]; fsDirs: string[] }> {
  if (!SNAPSHOT_NAME.test(req.name)) throw BlksnapError.of('EINVAL', `bad snapshot name "${req.name}"`);
  if (!Number.isSafeInteger(req.freezeMs) || req.freezeMs < 1 || req.freezeMs > 60_000) {
    throw BlksnapError.of('EINVAL', `--freeze-timeout must be 1..60000 milliseconds, not ${req.freezeMs}`);
  }
  const mounts = await Promise.all(req.mounts.map(async (m) => realpath(m).catch((err: unknown) => {
    throw asBlksnapError(err, `cannot use ${m}`);
  })));
  const seen = new Set<string>();
  for (const m of mounts) {
    if (seen.has(m)) throw BlksnapError.of('EINVAL', `${m} is named twice`);
    seen.add(m);
    // A name taken already is left for mkdir to find: checking here could not close the race anyway.
    await readStatus(m).catch((err: unknown) => {
      throw asBlksnapError(err, `${m} is not a blksnapfs mount`);
    });
  }
  const fsDirs = await Promise.all(req.fsfreeze.map(async (d) => realpath(d).catch((err: unknown) => {
    throw asBlksnapError(err, `cannot use --fsfreeze ${d}`);
  })));
  if (new Set(fsDirs).size !== fsDirs.length) throw BlksnapError.of('EINVAL', 'a --fsfreeze directory is named twice');
  // fsfreeze on any other directory freezes whatever file system holds it (perhaps /).
  const mountPoints = await mountPointsNow();
  for (const dir of fsDirs) {
    if (!mountPoints.has(dir)) throw BlksnapError.of('EINVAL', `--fsfreeze ${dir} is not a mount point`);
  }
  return { mounts, fsDirs };
}

/** A token no other caller can have: this command's freeze of one mount. */
function freezeToken(): string {
  return `take-${process.pid}-${randomBytes(12).toString('hex')}`;
}

/** Thaw what was frozen (each mount by its token), newest first; the first failure, or null. */
async function thawAll(frozenMounts: Map<string, string>, frozenFs: string[], freezeMs: number): Promise<unknown> {
  const thawed = await eachAtOnce([...frozenMounts], ([m, token]) => sendControl(m, `thaw ${token}`).catch((err: unknown) => {
    if (errnoNameOf(err) === 'ESTALE') {
      throw BlksnapError.of('ETIMEDOUT', `the freeze of ${m} ran out (${freezeMs} ms) before the set was taken; try a longer --freeze-timeout`);
    }
    throw asBlksnapError(err, `cannot thaw ${m}`);
  }));
  let failure = thawed.failure;
  for (const dir of [...frozenFs].reverse()) {
    try {
      await fsfreeze('-u', dir);
    } catch (err) {
      failure ??= err;
    }
  }
  return failure;
}

/** Take the set; on failure nothing of it is left and every freeze is undone. */
export async function takeCoherentSet(req: SetRequest): Promise<SetMember[]> {
  const { mounts, fsDirs } = await checkRequest(req);
  // One mount needs no freeze of its own: mkdir is already a point in time.
  const freezeMounts = mounts.length > 1;
  const latch = new SignalLatch();
  latch.install();
  try {
    const frozenFs: string[] = [];
    /** Each frozen mount and the token of its freeze. */
    const frozenMounts = new Map<string, string>();
    let taken: string[] = [];
    let failure: unknown = null;
    try {
      // File systems one at a time: one of them may live on another's device.
      for (const dir of fsDirs) {
        latch.check();
        await fsfreeze('-f', dir);
        frozenFs.push(dir);
      }
      latch.check();
      if (freezeMounts) {
        const r = await eachAtOnce(mounts, async (m) => {
          const token = freezeToken();
          await sendControl(m, `freeze ${req.freezeMs} ${token}`).catch((err: unknown) => {
            throw asBlksnapError(err, `cannot freeze ${m}`);
          });
          frozenMounts.set(m, token);
        });
        if (r.failure !== null) throw r.failure;
      }
      latch.check();
      const r = await eachAtOnce(mounts, (m) => takeSnapshot(m, req.name).catch((err: unknown) => {
        throw asBlksnapError(err, `cannot take ${req.name} on ${m}`);
      }));
      taken = r.done;
      if (r.failure !== null) throw r.failure;
    } catch (err) {
      failure = err;
    }
    // Always, whatever failed above (not `failure ??= await ...`, which would skip it).
    const thawFailure = await thawAll(frozenMounts, frozenFs, req.freezeMs);
    failure ??= thawFailure;
    if (failure === null && latch.signal !== null) failure = BlksnapError.of('EINTR', `interrupted by ${latch.signal}`);
    if (failure === null) return await Promise.all(mounts.map(async (mount) => ({ mount, info: await readInfo(mount, req.name) })));
    // All or nothing: destroy what was taken.
    const left: string[] = [];
    for (const m of taken) await destroySnapshot(m, req.name).catch(() => left.push(m));
    const err = failure instanceof Error ? failure : new Error(String(failure));
    if (left.length > 0) err.message += ` (and ${req.name} could not be destroyed on ${left.join(', ')})`;
    throw err;
  } finally {
    latch.remove();
  }
}
