/**
 * May change tracking saved at the last unmount be resumed? Only when continuity is
 * proven: a state that a clean shutdown wrote (a mount marks it "in-use", a crash
 * leaves it so; a shutdown that saw the origin written outside the mount writes
 * "unproven"), with a good checksum, for the same block geometry, and an origin that
 * is the same and unchanged since the save (see origin-fingerprint.ts). Anything else
 * starts a new generation, and the reason says why. A resumed map that missed a write
 * would make an incremental backup silently wrong, so every doubt means a reset:
 * - a part of either fingerprint that could not be read (`unknown`, or the placeholder
 *   older versions saved for a loop device's backing file) proves nothing;
 * - a block device's identity (WWID, serial, loop backing file), where recorded then
 *   and now, must be the same; `cbt_trust` vouches for writes, not for which disk it is,
 *   so it still needs the identity to match (and a state saved before identities were
 *   kept is not enough for it).
 *
 * Pure: the caller loads the state and takes the fingerprint.
 */
import type { CbtState, LoadedCbtState } from '../storage/cbt-state-file.js';
import type { FileFingerprint, OriginFingerprint } from '../storage/origin-fingerprint.js';
import type { ResetReason } from './change-tracker.js';

export interface ContinuityInput {
  saved: LoadedCbtState;
  origin: OriginFingerprint;
  blockSize: number;
  blockCount: number;
  /** cbt_trust: the operator vouches that nothing writes the block device outside the mount. */
  trust: boolean;
}

export type Continuity =
  | { resume: true; state: CbtState }
  | { resume: false; reason: ResetReason; detail: string };

function reset(reason: ResetReason, detail: string): Continuity {
  return { resume: false, reason, detail };
}

/** The placeholder older versions saved for a backing file they could not stat. */
function isPlaceholder(f: FileFingerprint | null): boolean {
  return f !== null && (f.dev === '?' || f.ino === '?' || f.mtimeNs === '?');
}

function sameFile(a: FileFingerprint | null, b: FileFingerprint | null): boolean {
  return a !== null && b !== null && !isPlaceholder(a) && !isPlaceholder(b) && a.dev === b.dev && a.ino === b.ino;
}

function unchangedFile(a: FileFingerprint | null, b: FileFingerprint | null): boolean {
  return sameFile(a, b) && a?.size === b?.size && a?.mtimeNs === b?.mtimeNs && a?.ctimeNs === b?.ctimeNs;
}

/** What could not be read, then or now. */
function unknownParts(was: OriginFingerprint, now: OriginFingerprint): string[] {
  const parts = [...(was.unknown ?? []).map((u) => `at the save, ${u}`), ...(now.unknown ?? []).map((u) => `now, ${u}`)];
  if (isPlaceholder(was.backingFile)) parts.push("at the save, the loop device's backing file could not be looked at");
  return parts;
}

/** A block device's identity check: null when it passes. */
function identityDoubt(was: OriginFingerprint, now: OriginFingerprint, trust: boolean): string | null {
  const before = was.identity;
  const after = now.identity ?? null;
  if (before === undefined) return trust ? "the saved state does not record the disk's identity, so cbt_trust cannot tell it is the same disk" : null;
  if (before !== after) return `another disk: its identity was ${before ?? 'none'}, now ${after ?? 'none'}`;
  return null;
}

export function decideContinuity(input: ContinuityInput): Continuity {
  const { saved, origin: now } = input;
  if (saved.kind === 'missing') return reset('first', 'no saved change tracking');
  if (saved.kind === 'invalid') return reset('state-invalid', `the saved state is damaged (${saved.why})`);
  const h = saved.state.header;
  const resume: Continuity = { resume: true, state: saved.state };
  if (h.state === 'unproven') return reset('origin-changed', `the origin was written outside the last mount while it was mounted (${h.unproven ?? 'no detail'})`);
  if (h.state !== 'clean') return reset('unclean', 'the last mount did not shut down cleanly');
  const was = h.origin;
  if (was.kind !== now.kind) return reset('origin-changed', `the origin was a ${was.kind}, now a ${now.kind}`);
  if (now.kind === 'file' && !sameFile(was.file, now.file)) return reset('origin-changed', 'the origin is another file (device or inode differ)');
  if (was.size !== now.size) return reset('capacity', `the origin's size changed from ${was.size} to ${now.size} bytes`);
  if (h.block_size !== input.blockSize || h.block_count !== input.blockCount) {
    return reset('capacity', `the tracking geometry changed from ${h.block_count} blocks of ${h.block_size} to ${input.blockCount} of ${input.blockSize}`);
  }
  if (now.kind === 'file') {
    return unchangedFile(was.file, now.file) ? resume : reset('origin-changed', 'the origin file was modified since the save (mtime or ctime)');
  }
  const doubt = identityDoubt(was, now, input.trust);
  if (doubt !== null) return reset('origin-changed', doubt);
  if (input.trust) return resume;
  const unknown = unknownParts(was, now);
  if (unknown.length > 0) return reset('origin-changed', `unchanged cannot be proven: ${unknown.join('; ')}`);
  if (now.bootId === null || was.bootId !== now.bootId) return reset('origin-changed', 'the machine was rebooted since the save (use cbt_trust to vouch for the device)');
  if (was.rdev !== now.rdev || was.diskseq !== now.diskseq) return reset('origin-changed', 'the block device was re-attached or replaced since the save (major:minor or diskseq differ)');
  if (now.writeCounters === null || was.writeCounters !== now.writeCounters) return reset('origin-changed', 'the block device was written outside the mount (its write counters moved)');
  if ((was.backingFile !== null || now.backingFile !== null) && !unchangedFile(was.backingFile, now.backingFile)) {
    return reset('origin-changed', "the loop device's backing file was modified since the save");
  }
  return resume;
}
