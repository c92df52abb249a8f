/**
 * `blksnapfs backup`: copy a snapshot image to a backup file, all of it (full) or only
 * the blocks its change map says changed since the previous backup (incremental).
 *
 *   decide ──> prepare TARGET.partial ──> copy ──> fdatasync ──> verify ──> manifest ──> commit
 *              full: empty, sparse          (pieces read ahead through the mount)
 *              incremental: clone of the previous image
 *
 * Incremental means: the previous manifest has this snapshot's generation_id, and the
 * blocks whose cbtmap byte is greater than the previous changes_number are copied, no
 * others. A different generation (the map was reset, or the mount restarted) cannot
 * say what changed, so the run falls back to a full backup and says so.
 *
 * Holes: the image is read with SEEK_DATA/SEEK_HOLE (backup-extents.ts) and a hole is
 * never read: it stays a hole in a full backup, and is punched in an incremental one.
 *
 * Verify: every copied range is read back from TARGET.partial after fdatasync and its
 * sha256 compared with the one taken while reading the snapshot; the same pass
 * recomputes the whole-image checksum table where it changed. The commit protocol (and
 * why kill -9 is safe at any point) is described in backup-manifest.ts.
 */
import { promises as fsp, type promises } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { BlksnapError } from '../errors.js';
import { writeFully } from '../storage/io.js';
import { changedRanges } from './cbt-commands.js';
import { readCbtmap, readInfo, readStatus, type InfoDoc } from './client.js';
import { IntervalHasher, segmentSizeFor, segmentsOf, type Interval } from './backup-hash.js';
import {
  backupPaths, fileIdentity, imagePathOf, manifestText, MANIFEST_FORMAT, readManifest, settlePending, syncDir, unlinkIfThere, writeDurable,
  type BackupManifest, type BackupPaths,
} from './backup-manifest.js';
import { readSparseAhead, zeroRange } from './backup-extents.js';
import { cloneFile, lockTarget, mergeIntervals, splitIntervals, writeSparse } from './backup-io.js';
import { findMismatches, settleManifest } from './backup-verify.js';
import type { Progress } from './progress.js';

type Handle = promises.FileHandle;

/** A copied range's checksum covers at most this much (a manifest line per 64 MiB of a full backup). */
export const RANGE_MAX = 64 * 1024 * 1024;

export interface BackupRequest {
  mount: string;
  name: string;
  target: string;
  sinceManifest?: string;
  progress: Progress;
  /** Aborted (Ctrl-C, SIGTERM): stop at the next piece, remove the partial files. */
  signal?: AbortSignal;
}

export interface BackupResult {
  type: 'result';
  kind: 'full' | 'incremental';
  reason: string;
  snapshot: string;
  target: string;
  manifest: string;
  generation_id: string;
  changes_number: number;
  since_changes_number: number | null;
  block_size: number;
  image_size: number;
  copied_bytes: number;
  copied_blocks: number;
  copied_ranges: number;
  /** Bytes read from the snapshot image (its data). */
  read_bytes: number;
  /** Bytes of the copied ranges that were holes in the image: never read. */
  hole_bytes: number;
  written_bytes: number;
  verified_bytes: number;
  elapsed_ms: number;
  verified: true;
}

interface Source {
  info: InfoDoc;
  map: Buffer;
  image: Handle;
  origin: string | null;
}

type Plan =
  | { kind: 'full'; reason: string }
  | { kind: 'incremental'; reason: string; prev: BackupManifest; base: string };

/** Open the snapshot so that its info, map and image are surely the same snapshot. */
async function openSource(mount: string, name: string): Promise<Source> {
  const infoPath = join(mount, 'snapshots', name, 'info');
  const before = await readInfo(mount, name).catch((err: unknown) => {
    if ((err as { code?: string }).code === 'ENOENT') throw BlksnapError.of('ENOENT', `no snapshot "${name}" in ${mount}/snapshots (is ${mount} a blksnapfs mount?)`);
    throw err;
  });
  if (before.state !== 'ok') throw BlksnapError.of('EIO', `snapshot ${name} is ${before.state} (${before.error ?? 'EIO'}); it cannot be backed up`);
  const image = await fsp.open(join(mount, 'snapshots', name, 'image'), 'r');
  try {
    const map = await readCbtmap(mount, name);
    const info = await readInfo(mount, name);
    // A name never comes back to an old uuid: same uuid on both sides means the image
    // opened in between is this snapshot too.
    if (info.uuid !== before.uuid) throw BlksnapError.of('EAGAIN', `snapshot ${name} was replaced while the backup started (${infoPath}); try again`);
    if (map.length !== info.block_count) throw BlksnapError.of('EIO', `cbtmap of ${name} has ${map.length} bytes, info says ${info.block_count} blocks`);
    const size = (await image.stat()).size;
    if (size !== info.device_capacity) throw BlksnapError.of('EIO', `image of ${name} is ${size} bytes, info says ${info.device_capacity}`);
    const origin = await readStatus(mount).then((s) => s.origin.path, () => null);
    return { info, map, image, origin };
  } catch (err) {
    await image.close();
    throw err;
  }
}

async function decide(req: BackupRequest, info: InfoDoc, paths: BackupPaths): Promise<Plan> {
  if (req.sinceManifest === undefined) return { kind: 'full', reason: 'no previous manifest given (--since-manifest)' };
  const prevPath = resolve(req.sinceManifest);
  if (prevPath !== paths.manifest) await settleManifest(prevPath, req.progress); // ours is settled already
  const prev = await readManifest(prevPath);
  const full = (why: string): Plan => ({ kind: 'full', reason: `${why}; the change map cannot tell what changed since ${prevPath}, so this is a full backup` });
  if (prev.generation_id !== info.generation_id) return full(`change-tracking generation changed (${prev.generation_id} -> ${info.generation_id})`);
  if (prev.image_size !== info.device_capacity) return full(`image size changed (${prev.image_size} -> ${info.device_capacity})`);
  if (prev.block_size !== info.block_size || prev.block_count !== info.block_count) return full(`tracking block size changed (${prev.block_size} -> ${info.block_size})`);
  if (prev.changes_number > info.changes_number) {
    throw BlksnapError.of('EINVAL', `snapshot ${req.name} (changes_number ${info.changes_number}) is older than the backup in ${prevPath} (changes_number ${prev.changes_number})`);
  }
  const base = imagePathOf(prevPath, prev);
  const id = await fileIdentity(base).catch(() => {
    throw BlksnapError.of('ENOENT', `the previous backup image ${base} (named in ${prevPath}) is missing; make a full backup (leave out --since-manifest)`);
  });
  if (id.size !== prev.image_size) {
    throw BlksnapError.of('EINVAL', `the previous backup image ${base} is ${id.size} bytes, its manifest says ${prev.image_size}; make a full backup`);
  }
  if (id.mtime_ns !== prev.target_file.mtime_ns) {
    // Touched since its manifest was written: building on it is safe only if it still matches.
    req.progress.note(`${base} was modified after its manifest was written; checking it against the manifest`);
    const bad = await findMismatches(base, prev, req.progress, 'check-base', abortCheck(req.signal));
    if (bad.length > 0) {
      throw BlksnapError.of('EIO', `the previous backup image ${base} no longer matches ${prevPath} (first difference in the segment at offset ${bad[0]?.offset ?? 0}); make a full backup`);
    }
  }
  return { kind: 'incremental', reason: `blocks changed since changes_number ${prev.changes_number} (${prevPath})`, prev, base };
}

function abortCheck(signal: AbortSignal | undefined): () => void {
  return () => {
    if (signal?.aborted === true) throw BlksnapError.of('EINTR', 'backup interrupted');
  };
}

export async function runBackup(req: BackupRequest): Promise<BackupResult> {
  const started = new Date();
  const mount = resolve(req.mount);
  const paths = backupPaths(req.target);
  const dir = dirname(paths.target);
  const st = await fsp.stat(dir).catch(() => null);
  if (st === null || !st.isDirectory()) throw BlksnapError.of('ENOENT', `the directory of ${paths.target} does not exist`);
  const check = abortCheck(req.signal);

  const source = await openSource(mount, req.name);
  try {
    const lock = await lockTarget(paths);
    try {
      const settled = await settlePending(paths);
      if (settled === 'committed') req.progress.note(`finished committing ${paths.manifest} (the previous run was stopped just before)`);
      if (settled === 'discarded') req.progress.note(`removed ${paths.manifestPartial} left by an interrupted run`);
      await unlinkIfThere(paths.targetPartial);
      const plan = await decide(req, source.info, paths);
      if (plan.kind === 'full' && req.sinceManifest !== undefined) req.progress.note(plan.reason);
      return await backupInto(req, source, paths, plan, started, check);
    } finally {
      await lock?.release();
    }
  } finally {
    await source.image.close();
  }
}

async function backupInto(req: BackupRequest, source: Source, paths: BackupPaths, plan: Plan, started: Date, check: () => void): Promise<BackupResult> {
  const { info, map, image } = source;
  const size = info.device_capacity;
  const since = plan.kind === 'incremental' ? plan.prev.changes_number : null;
  const changed = since === null ? [{ offset: 0, length: size }] : changedRanges(map, since, info.block_size, size);
  const ranges: Interval[] = splitIntervals(changed, RANGE_MAX);
  const copiedBytes = ranges.reduce((n, r) => n + r.length, 0);
  const copiedBlocks = since === null ? info.block_count : map.reduce((n, b) => (b > since ? n + 1 : n), 0);

  let out: Handle | null = null;
  let committed = false;
  try {
    if (plan.kind === 'full') {
      out = await fsp.open(paths.targetPartial, 'wx+', 0o644);
      await out.truncate(size);
    } else {
      await cloneFile(plan.base, paths.targetPartial);
      out = await fsp.open(paths.targetPartial, 'r+');
    }

    // Copy: read the snapshot's data through the mount (its holes are never read: they
    // stay holes in a full backup and are punched in an incremental one), hash it all.
    const sourceHash = new IntervalHasher(ranges);
    let written = 0;
    let readBytes = 0;
    let holeBytes = 0;
    req.progress.phase('copy', copiedBytes);
    for await (const piece of readSparseAhead(image, ranges, check)) {
      if (piece.data === null) {
        sourceHash.zeros(piece.position, piece.length);
        if (plan.kind === 'incremental') await zeroRange(out, piece.position, piece.length);
        holeBytes += piece.length;
      } else {
        sourceHash.update(piece.position, piece.data);
        readBytes += piece.length;
        if (plan.kind === 'full') {
          written += await writeSparse(out, piece.data, piece.position);
        } else {
          await writeFully(out, piece.data, 0, piece.data.length, piece.position);
          written += piece.data.length;
        }
      }
      req.progress.advance(piece.length);
    }
    req.progress.end();
    const sourceDigests = sourceHash.digests();
    await out.datasync();

    // Verify and checksum: read back what changed, segment by segment (holes of the
    // backup image are zeros, and are not read either).
    const segmentSize = segmentSizeFor(size, info.block_size);
    const segmentCount = Math.ceil(size / segmentSize);
    const reuse = plan.kind === 'incremental' && plan.prev.checksum.segment_size === segmentSize && plan.prev.checksum.segments.length === segmentCount;
    const segments: string[] = reuse && plan.kind === 'incremental' ? [...plan.prev.checksum.segments] : new Array<string>(segmentCount).fill('');
    const touched = new Set<number>();
    if (reuse) {
      for (const r of ranges) {
        const [first, last] = segmentsOf(r, segmentSize);
        for (let s = first; s <= last; s++) touched.add(s);
      }
    } else {
      for (let s = 0; s < segmentCount; s++) touched.add(s);
    }
    const segIndexes = [...touched].sort((a, b) => a - b);
    const segIntervals = segIndexes.map((s) => ({ offset: s * segmentSize, length: Math.min(segmentSize, size - s * segmentSize) }));
    const reread = mergeIntervals(segIntervals);
    const segHash = new IntervalHasher(segIntervals);
    const readBack = new IntervalHasher(ranges);
    const verifyBytes = reread.reduce((n, r) => n + r.length, 0);
    req.progress.phase('verify', verifyBytes);
    for await (const piece of readSparseAhead(out, reread, check)) {
      if (piece.data === null) {
        segHash.zeros(piece.position, piece.length);
        readBack.zeros(piece.position, piece.length);
      } else {
        segHash.update(piece.position, piece.data);
        readBack.update(piece.position, piece.data);
      }
      req.progress.advance(piece.length);
    }
    req.progress.end();
    const readDigests = readBack.digests();
    ranges.forEach((r, i) => {
      if (readDigests[i] !== sourceDigests[i]) {
        throw BlksnapError.of('EIO', `verification failed: ${paths.targetPartial} at ${r.offset}+${r.length} does not hold what was read from the snapshot`);
      }
    });
    segHash.digests().forEach((d, i) => {
      const s = segIndexes[i];
      if (s !== undefined) segments[s] = d;
    });
    await out.close();
    out = null;

    // Manifest, then the commit (backup-manifest.ts explains the order).
    const manifest: BackupManifest = {
      format: MANIFEST_FORMAT,
      kind: plan.kind,
      target: basename(paths.target),
      target_file: await fileIdentity(paths.targetPartial),
      snapshot: { name: info.name, uuid: info.uuid, created: info.created, mountpoint: resolve(req.mount), origin: source.origin },
      generation_id: info.generation_id,
      changes_number: info.changes_number,
      since_changes_number: since,
      block_size: info.block_size,
      block_count: info.block_count,
      image_size: size,
      checksum: { algorithm: 'sha256', segment_size: segmentSize, segments },
      copied: { bytes: copiedBytes, blocks: copiedBlocks, ranges: ranges.length, read_bytes: readBytes, hole_bytes: holeBytes },
      started: started.toISOString(),
      finished: new Date().toISOString(),
    };
    check();
    await writeDurable(paths.manifestPartial, manifestText(manifest));
    await fsp.rename(paths.targetPartial, paths.target);
    committed = true;
    await syncDir(dirname(paths.target));
    await fsp.rename(paths.manifestPartial, paths.manifest);
    await syncDir(dirname(paths.manifest));

    return {
      type: 'result',
      kind: plan.kind,
      reason: plan.reason,
      snapshot: info.name,
      target: paths.target,
      manifest: paths.manifest,
      generation_id: info.generation_id,
      changes_number: info.changes_number,
      since_changes_number: since,
      block_size: info.block_size,
      image_size: size,
      copied_bytes: copiedBytes,
      copied_blocks: copiedBlocks,
      copied_ranges: ranges.length,
      read_bytes: readBytes,
      hole_bytes: holeBytes,
      written_bytes: written,
      verified_bytes: verifyBytes,
      elapsed_ms: Date.now() - started.getTime(),
      verified: true,
    };
  } catch (err) {
    await out?.close().catch(() => undefined);
    // Before the commit point the partial files are ours and worthless; after it,
    // settlePending finishes the job on the next run.
    if (!committed) {
      await unlinkIfThere(paths.targetPartial).catch(() => undefined);
      await unlinkIfThere(paths.manifestPartial).catch(() => undefined);
    }
    throw err;
  }
}
