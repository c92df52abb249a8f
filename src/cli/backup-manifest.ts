/**
 * The backup manifest: a JSON file next to the backup image that says what the image
 * is (which snapshot, which change-tracking generation and changes_number), a sha256
 * for every segment of the whole image (segments of at least 1 MiB, written one line
 * for all: under 70 KB per GiB of image), and a summary of what the run that wrote it
 * copied. Format 2; format 1 manifests (one sha256 per copied range, 64 KiB segments)
 * are still read, so an incremental backup can build on one.
 *
 * Files of one backup TARGET, all in its directory:
 *
 *     TARGET                   the image (sparse where the snapshot read zeros)
 *     TARGET.manifest.json     this manifest
 *     TARGET.partial           the next image while a backup runs
 *     TARGET.manifest.json.partial   the next manifest, written before the commit
 *     TARGET.lock              flock()ed by a running backup or verify; removed when it ends
 *
 * Commit, and why a kill -9 at any point leaves a usable pair:
 *
 *     write TARGET.partial, fdatasync ──> write manifest.partial (records the inode of
 *     TARGET.partial), fdatasync ──> rename TARGET.partial -> TARGET   <- commit point
 *     ──> rename manifest.partial -> manifest
 *
 * Before the commit point TARGET and its manifest are the old pair, untouched. After
 * it, the new image is in place and the pending manifest names its inode: the next
 * backup or verify (`settlePending`) sees that and finishes the second rename. A
 * pending manifest whose inode is not TARGET's is debris from a killed run, and goes.
 */
import { promises as fsp } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { BlksnapError } from '../errors.js';
import { HASH_ALGORITHM } from './backup-hash.js';

export const MANIFEST_FORMAT = 'blksnapfs-backup/2';
/** The format before it: read, never written. */
const MANIFEST_FORMAT_1 = 'blksnapfs-backup/1';

/** What one run copied: a summary (each range was checked against its read-back during the run). */
export interface CopiedSummary {
  /** Bytes the run covered: the whole image (full), or the changed blocks (incremental). */
  bytes: number;
  blocks: number;
  /** How many ranges (of at most 64 MiB) those bytes were copied and checked in. */
  ranges: number;
  /** Bytes read from the snapshot image: the data among them. */
  read_bytes: number;
  /** Bytes that were holes in the image (SEEK_HOLE): never read, holes in TARGET. */
  hole_bytes: number;
}

export interface BackupManifest {
  format: string;
  kind: 'full' | 'incremental';
  /** The image's file name, in the manifest's own directory. */
  target: string;
  /** The image file as this run left it (to notice later changes, and as the commit marker). */
  target_file: { size: number; ino: number; mtime_ns: string };
  snapshot: { name: string; uuid: string; created: string; mountpoint: string; origin: string | null };
  generation_id: string;
  changes_number: number;
  /** For an incremental backup, the changes_number of the backup it was built on. */
  since_changes_number: number | null;
  block_size: number;
  block_count: number;
  image_size: number;
  checksum: { algorithm: string; segment_size: number; segments: string[] };
  copied: CopiedSummary;
  started: string;
  finished: string;
}

export interface BackupPaths {
  target: string;
  manifest: string;
  targetPartial: string;
  manifestPartial: string;
  lock: string;
}

export function backupPaths(target: string): BackupPaths {
  const abs = resolve(target);
  const manifest = `${abs}.manifest.json`;
  return { target: abs, manifest, targetPartial: `${abs}.partial`, manifestPartial: `${manifest}.partial`, lock: `${abs}.lock` };
}

/** The image a manifest describes (its `target`, relative to the manifest's directory). */
export function imagePathOf(manifestPath: string, m: BackupManifest): string {
  return join(dirname(resolve(manifestPath)), m.target);
}

function invalid(path: string, why: string): never {
  throw BlksnapError.of('EINVAL', `${path} is not a blksnapfs backup manifest: ${why}`);
}

function field<T>(path: string, obj: Record<string, unknown>, key: string, check: (v: unknown) => v is T, what: string): T {
  const v = obj[key];
  if (!check(v)) invalid(path, `"${key}" must be ${what}`);
  return v;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const isString = (v: unknown): v is string => typeof v === 'string';
const isHex = (v: unknown): v is string => typeof v === 'string' && /^[0-9a-f]{64}$/.test(v);

/** Parse and check a manifest; every field the tools rely on is validated. */
export function parseManifest(path: string, text: string): BackupManifest {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    invalid(path, err instanceof Error ? err.message : String(err));
  }
  if (!isObject(doc)) invalid(path, 'not a JSON object');
  const format = doc['format'];
  if (format !== MANIFEST_FORMAT && format !== MANIFEST_FORMAT_1) invalid(path, `"format" must be "${MANIFEST_FORMAT}" (or "${MANIFEST_FORMAT_1}")`);
  const kind = doc['kind'];
  if (kind !== 'full' && kind !== 'incremental') invalid(path, '"kind" must be "full" or "incremental"');
  const target = field(path, doc, 'target', isString, 'a file name');
  if (target.length === 0 || basename(target) !== target) invalid(path, '"target" must be a plain file name');
  const blockSize = field(path, doc, 'block_size', isCount, 'a number');
  const imageSize = field(path, doc, 'image_size', isCount, 'a number');
  const checksum = field(path, doc, 'checksum', isObject, 'an object');
  if (checksum['algorithm'] !== HASH_ALGORITHM) invalid(path, `checksum.algorithm must be "${HASH_ALGORITHM}"`);
  const segmentSize = field(path, checksum, 'segment_size', isCount, 'a number');
  const segments = checksum['segments'];
  if (segmentSize === 0 || !Array.isArray(segments) || !segments.every(isHex) || segments.length !== Math.ceil(imageSize / segmentSize)) {
    invalid(path, 'checksum.segments must hold one sha256 per segment of the image');
  }
  const since = doc['since_changes_number'];
  if (since !== null && !isCount(since)) invalid(path, '"since_changes_number" must be null or a number');
  const file = field(path, doc, 'target_file', isObject, 'an object');
  const snapshot = field(path, doc, 'snapshot', isObject, 'an object');
  const copied = field(path, doc, 'copied', isObject, 'an object');
  const copiedBytes = field(path, copied, 'bytes', isCount, 'a number');
  let summary: CopiedSummary;
  if (format === MANIFEST_FORMAT_1) {
    // Format 1 listed each range with its sha256; it read every byte it covered.
    const ranges = copied['ranges'];
    const isRange = (r: unknown): boolean => isObject(r) && isCount(r['offset']) && isCount(r['length']) && isHex(r['sha256']);
    if (!Array.isArray(ranges) || !ranges.every(isRange)) invalid(path, 'copied.ranges must be a list of {offset, length, sha256}');
    summary = { bytes: copiedBytes, blocks: field(path, copied, 'blocks', isCount, 'a number'), ranges: ranges.length, read_bytes: copiedBytes, hole_bytes: 0 };
  } else {
    summary = {
      bytes: copiedBytes,
      blocks: field(path, copied, 'blocks', isCount, 'a number'),
      ranges: field(path, copied, 'ranges', isCount, 'a number'),
      read_bytes: field(path, copied, 'read_bytes', isCount, 'a number'),
      hole_bytes: field(path, copied, 'hole_bytes', isCount, 'a number'),
    };
  }
  const origin = snapshot['origin'];
  return {
    format: MANIFEST_FORMAT,
    kind,
    target,
    target_file: {
      size: field(path, file, 'size', isCount, 'a number'),
      ino: field(path, file, 'ino', isCount, 'a number'),
      mtime_ns: field(path, file, 'mtime_ns', isString, 'a string'),
    },
    snapshot: {
      name: field(path, snapshot, 'name', isString, 'a string'),
      uuid: field(path, snapshot, 'uuid', isString, 'a string'),
      created: field(path, snapshot, 'created', isString, 'a string'),
      mountpoint: field(path, snapshot, 'mountpoint', isString, 'a string'),
      origin: typeof origin === 'string' ? origin : null,
    },
    generation_id: field(path, doc, 'generation_id', isString, 'a string'),
    changes_number: field(path, doc, 'changes_number', isCount, 'a number'),
    since_changes_number: since,
    block_size: blockSize,
    block_count: field(path, doc, 'block_count', isCount, 'a number'),
    image_size: imageSize,
    checksum: { algorithm: HASH_ALGORITHM, segment_size: segmentSize, segments },
    copied: summary,
    started: field(path, doc, 'started', isString, 'a string'),
    finished: field(path, doc, 'finished', isString, 'a string'),
  };
}

export async function readManifest(path: string): Promise<BackupManifest> {
  let text: string;
  try {
    text = await fsp.readFile(path, 'utf8');
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'ENOENT') throw BlksnapError.of('ENOENT', `manifest ${path} does not exist`);
    throw BlksnapError.of('EIO', `cannot read manifest ${path}: ${err instanceof Error ? err.message : String(err)}`);
  }
  return parseManifest(path, text);
}

/**
 * The manifest as text: indented JSON for people, except the checksum table, which is
 * one line (an indented line per segment would double its size).
 */
export function manifestText(m: BackupManifest): string {
  const marker = '"@segments@"';
  const text = JSON.stringify({ ...m, checksum: { ...m.checksum, segments: '@segments@' } }, null, 2);
  return `${text.replace(marker, JSON.stringify(m.checksum.segments))}\n`;
}

/** Write a file and make it durable before anybody renames it into place. */
export async function writeDurable(path: string, text: string): Promise<void> {
  const fh = await fsp.open(path, 'w', 0o644);
  try {
    await fh.writeFile(text, 'utf8');
    await fh.datasync();
  } finally {
    await fh.close();
  }
}

/** Make renames in a directory durable. */
export async function syncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export async function fileIdentity(path: string): Promise<{ size: number; ino: number; mtime_ns: string }> {
  const st = await fsp.stat(path, { bigint: true });
  return { size: Number(st.size), ino: Number(st.ino), mtime_ns: st.mtimeNs.toString() };
}

async function unlinkIfThere(path: string): Promise<void> {
  await fsp.unlink(path).catch((err: unknown) => {
    if ((err as { code?: string }).code !== 'ENOENT') throw err;
  });
}

/**
 * Finish or discard what a killed run left behind (see the commit diagram above).
 * Returns what it did, for the user to read.
 */
export async function settlePending(paths: BackupPaths): Promise<'committed' | 'discarded' | null> {
  let pending: BackupManifest;
  try {
    pending = parseManifest(paths.manifestPartial, await fsp.readFile(paths.manifestPartial, 'utf8'));
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOENT') return null;
    await unlinkIfThere(paths.manifestPartial);
    return 'discarded';
  }
  const now = await fileIdentity(paths.target).catch(() => null);
  const want = pending.target_file;
  if (now !== null && now.ino === want.ino && now.size === want.size && now.mtime_ns === want.mtime_ns) {
    await fsp.rename(paths.manifestPartial, paths.manifest).catch((err: unknown) => {
      if ((err as { code?: string }).code !== 'ENOENT') throw err; // a concurrent settle won the race
    });
    await syncDir(dirname(paths.manifest));
    return 'committed';
  }
  await unlinkIfThere(paths.manifestPartial);
  return 'discarded';
}

export { unlinkIfThere };
