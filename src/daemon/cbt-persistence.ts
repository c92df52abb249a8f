/**
 * Change tracking between mounts: where it is kept (`cbt_state`), whether the saved
 * generation may be resumed (cbt-continuity.ts decides), the "in-use" mark a mount
 * makes before it accepts the first origin write, and the save at a clean shutdown.
 *
 * Life of the state file over one mount:
 *
 *     open:     load -> fingerprint the origin -> decide -> tracker (resumed or new)
 *     markInUse (before the mount goes live): rewritten "in-use", without the map
 *     ... the mount serves; a crash here leaves "in-use": the next mount says "unclean"
 *     save (shutdown, after the last write and the origin's datasync): "clean", with
 *          the map and the origin's fingerprint as it is now; "unproven" (no map) when
 *          the last look for writes made outside the mount (outside-write-watch.ts)
 *          found one: the next mount starts a new generation (origin-changed)
 *
 * A failed save (disk full, I/O error) is logged and leaves the file "in-use", so the
 * next mount starts a new generation rather than trusting a stale map. A mount that
 * fails after marking puts the file back as it was (or removes it if it was new).
 */
import { promises as fsp } from 'node:fs';
import type { Logger as PinoLogger } from 'pino';
import { BlksnapError } from '../errors.js';
import { ChangeTracker, type ResetReason } from '../engine/change-tracker.js';
import { decideContinuity } from '../engine/cbt-continuity.js';
import type { Geometry } from '../engine/geometry.js';
import type { OriginDevice } from '../storage/origin-device.js';
import { fingerprintOrigin, newestFileTimeMs, type OriginFingerprint } from '../storage/origin-fingerprint.js';
import { loadCbtState, saveCbtState, writeFileAtomically, type CbtStateFlag, type CbtStateHeader } from '../storage/cbt-state-file.js';
import { checkStoragePath } from '../storage/storage-path-policy.js';

/** Where a block device's state lives by default (its path names the file). */
export const BLOCK_DEVICE_STATE_DIR = '/var/lib/blksnapfs';

/**
 * Time stamps come from a clock that ticks once a jiffy (up to 10 ms): a write right
 * after ours could get our mtime again and go unnoticed. So a save waits until the
 * clock has moved this far past the origin's newest time stamp before the origin is
 * let go.
 */
const TIMESTAMP_TICK_MS = 20;

/** "/dev/disk/by-id/x-1" -> "dev-disk-by-id-x-1" with other characters hex-escaped. */
function escapePath(path: string): string {
  return path.replace(/^\/+/, '').replace(/[^A-Za-z0-9._/-]/g, (c) => `_${c.charCodeAt(0).toString(16)}`).replace(/\//g, '-');
}

export function defaultCbtStatePath(origin: OriginDevice): string {
  return origin.identity.kind === 'file'
    ? `${origin.identity.path}.cbt`
    : `${BLOCK_DEVICE_STATE_DIR}/${escapePath(origin.identity.path)}.cbt`;
}

export interface CbtPersistenceSpec {
  /** cbt_state as given, or undefined for the default. */
  path: string | undefined;
  trust: boolean;
  origin: OriginDevice;
  mountpoint: string;
  diffStoragePath: string;
  geometry: Geometry;
  log: PinoLogger;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class CbtPersistence {
  /** The bytes that were there before markInUse (null: no file), to undo a failed start. */
  private previous: Buffer | null = null;
  private marked = false;

  private constructor(
    readonly path: string,
    readonly tracker: ChangeTracker,
    /** Why a new generation started at this mount (null when resumed). */
    readonly resetReason: ResetReason | null,
    private readonly origin: OriginDevice,
    private readonly log: PinoLogger,
    previous: Buffer | null,
  ) {
    this.previous = previous;
  }

  get resumed(): boolean {
    return this.resetReason === null;
  }

  static async open(spec: CbtPersistenceSpec): Promise<CbtPersistence> {
    const { origin, geometry, log } = spec;
    const path = spec.path ?? defaultCbtStatePath(origin);
    if (path === spec.diffStoragePath) throw BlksnapError.of('EINVAL', `cbt_state ${path} is the difference storage; give them different files`);
    if (spec.path === undefined && origin.identity.kind === 'block-device') {
      await fsp.mkdir(BLOCK_DEVICE_STATE_DIR, { recursive: true, mode: 0o700 });
    }
    await checkStoragePath(path, { origin: origin.identity, mountpoint: spec.mountpoint }, 'change-tracking state');
    const saved = await loadCbtState(path);
    const now = await fingerprintOrigin(origin);
    const decision = decideContinuity({ saved, origin: now, blockSize: geometry.blockSize, blockCount: geometry.blockCount, trust: spec.trust });
    const previous = saved.kind === 'missing' ? null : saved.bytes;
    if (decision.resume) {
      const h = decision.state.header;
      const tracker = ChangeTracker.resume(geometry.blockSize, geometry.blockCount, {
        generationId: h.generation_id,
        generationStarted: new Date(h.generation_started),
        generationReason: isResetReason(h.generation_reason) ? h.generation_reason : 'first',
        activeNumber: h.active_number,
        map: Uint8Array.from(decision.state.map),
      });
      tracker.resumedFrom = new Date(h.saved_at);
      tracker.statePath = path;
      log.info({ cbt_state: path, generation_id: h.generation_id, active_number: h.active_number, saved_at: h.saved_at }, 'change tracking resumed');
      return new CbtPersistence(path, tracker, null, origin, log, previous);
    }
    const tracker = ChangeTracker.fresh(geometry.blockSize, geometry.blockCount, decision.reason);
    tracker.statePath = path;
    log.info({ cbt_state: path, reason: decision.reason, why: decision.detail, generation_id: tracker.generationId }, 'change tracking starts a new generation');
    return new CbtPersistence(path, tracker, decision.reason, origin, log, previous);
  }

  private header(state: CbtStateFlag, origin: OriginFingerprint, unproven?: string): CbtStateHeader {
    const t = this.tracker;
    return {
      state,
      ...(unproven !== undefined ? { unproven } : {}),
      block_size: t.blockSize,
      block_count: t.blockCount,
      generation_id: t.generationId,
      generation_started: t.generationStarted.toISOString(),
      generation_reason: t.generationReason,
      active_number: t.activeNumber,
      saved_at: new Date().toISOString(),
      origin_path: this.origin.identity.path,
      origin,
    };
  }

  /** Durably mark the state in use: from here on a crash reads as "unclean". */
  async markInUse(): Promise<void> {
    await saveCbtState(this.path, { header: this.header('in-use', await fingerprintOrigin(this.origin)), map: new Uint8Array(0) });
    this.marked = true;
  }

  /** A start that failed after markInUse: nothing was written, so put back what was there. */
  async undoMark(): Promise<void> {
    if (!this.marked) return;
    if (this.previous === null) await fsp.rm(this.path, { force: true });
    else await writeFileAtomically(this.path, this.previous);
    this.marked = false;
  }

  /**
   * Save the map as "clean", or as "unproven" when `outside` says the origin was written
   * outside the mount (the last look, made after the last write of ours). Call only once
   * no origin write can happen any more and the origin has been datasynced: the
   * fingerprint taken here is what the next mount compares against.
   */
  async save(outside: { detail: string } | null): Promise<void> {
    const started = process.hrtime.bigint();
    const fingerprint = await fingerprintOrigin(this.origin);
    if (outside !== null) {
      await saveCbtState(this.path, { header: this.header('unproven', fingerprint, outside.detail), map: new Uint8Array(0) });
      this.log.warn({ cbt_state: this.path, generation_id: this.tracker.generationId, why: outside.detail }, 'change tracking saved as unproven: the next mount starts a new generation');
      return;
    }
    const newest = newestFileTimeMs(fingerprint);
    if (newest !== null) {
      const wait = newest + TIMESTAMP_TICK_MS - Date.now();
      if (wait > 0) await sleep(Math.min(wait, TIMESTAMP_TICK_MS));
    }
    await saveCbtState(this.path, { header: this.header('clean', fingerprint), map: this.tracker.state.map });
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    this.log.info({ cbt_state: this.path, generation_id: this.tracker.generationId, active_number: this.tracker.activeNumber, ms: Math.round(ms * 10) / 10 }, 'change tracking saved');
  }
}

const REASONS: readonly string[] = ['first', 'wrap', 'capacity', 'unclean', 'origin-changed', 'state-invalid'];

function isResetReason(s: string): s is ResetReason {
  return REASONS.includes(s);
}
