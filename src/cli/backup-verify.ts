/**
 * `blksnapfs verify-backup MANIFEST`: read the whole backup image and compare every
 * segment's sha256 with the manifest. Also finishes (or discards) what an interrupted
 * backup left behind first, so a verify after kill -9 checks the pair a backup would
 * build on next.
 */
import { promises as fsp } from 'node:fs';
import { resolve } from 'node:path';
import { BlksnapError } from '../errors.js';
import { IntervalHasher, type Interval } from './backup-hash.js';
import { backupPaths, fileIdentity, imagePathOf, readManifest, settlePending, type BackupManifest } from './backup-manifest.js';
import { readSparseAhead } from './backup-extents.js';
import { lockTarget } from './backup-io.js';
import type { Progress } from './progress.js';

export interface VerifyResult {
  type: 'result';
  ok: true;
  manifest: string;
  target: string;
  kind: 'full' | 'incremental';
  snapshot: string;
  generation_id: string;
  changes_number: number;
  image_size: number;
  segments: number;
  segment_size: number;
}

/** The segments of `image` whose sha256 differs from the manifest's. */
export async function findMismatches(image: string, m: BackupManifest, progress: Progress, phase: string, check: () => void): Promise<Interval[]> {
  const size = m.image_size;
  const segSize = m.checksum.segment_size;
  const segments: Interval[] = m.checksum.segments.map((_d, i) => ({ offset: i * segSize, length: Math.min(segSize, size - i * segSize) }));
  const hasher = new IntervalHasher(segments);
  const fh = await fsp.open(image, 'r');
  try {
    progress.phase(phase, size);
    // Holes of the backup image are zeros: fed as such, not read.
    for await (const piece of readSparseAhead(fh, [{ offset: 0, length: size }], check)) {
      if (piece.data === null) hasher.zeros(piece.position, piece.length);
      else hasher.update(piece.position, piece.data);
      progress.advance(piece.length);
    }
    progress.end();
  } finally {
    await fh.close();
  }
  const digests = hasher.digests();
  return segments.filter((_s, i) => digests[i] !== m.checksum.segments[i]);
}

const MANIFEST_SUFFIX = '.manifest.json';

/**
 * For TARGET.manifest.json: finish or discard an interrupted commit of TARGET, under its
 * lock (skipped where we may not write: a read-only backup medium has nothing pending
 * that we could fix anyway).
 */
export async function settleManifest(manifestPath: string, progress: Progress): Promise<void> {
  if (!manifestPath.endsWith(MANIFEST_SUFFIX)) return;
  const paths = backupPaths(manifestPath.slice(0, -MANIFEST_SUFFIX.length));
  const lock = await lockTarget(paths, true);
  if (lock === null) return;
  try {
    const settled = await settlePending(paths);
    if (settled === 'committed') progress.note(`finished committing ${paths.manifest} (the last backup was stopped just before)`);
    if (settled === 'discarded') progress.note(`removed ${paths.manifestPartial} left by an interrupted backup`);
  } finally {
    await lock.release();
  }
}

export async function verifyBackup(manifestArg: string, progress: Progress, signal?: AbortSignal): Promise<VerifyResult> {
  const manifestPath = resolve(manifestArg);
  await settleManifest(manifestPath, progress);
  const m = await readManifest(manifestPath);
  const image = imagePathOf(manifestPath, m);
  const id = await fileIdentity(image).catch(() => {
    throw BlksnapError.of('ENOENT', `backup image ${image} (named in ${manifestPath}) is missing`);
  });
  if (id.size !== m.image_size) throw BlksnapError.of('EIO', `backup image ${image} is ${id.size} bytes, its manifest says ${m.image_size}`);
  const check = (): void => {
    if (signal?.aborted === true) throw BlksnapError.of('EINTR', 'verify interrupted');
  };
  const bad = await findMismatches(image, m, progress, 'verify', check);
  const first = bad[0];
  if (first !== undefined) {
    throw BlksnapError.of('EIO', `backup image ${image} does not match ${manifestPath}: ${bad.length} segment(s) differ, the first at offset ${first.offset} (${first.length} bytes)`);
  }
  return {
    type: 'result',
    ok: true,
    manifest: manifestPath,
    target: image,
    kind: m.kind,
    snapshot: m.snapshot.name,
    generation_id: m.generation_id,
    changes_number: m.changes_number,
    image_size: m.image_size,
    segments: m.checksum.segments.length,
    segment_size: m.checksum.segment_size,
  };
}
