/**
 * The change-tracking state file (`cbt_state`): the bytes on disk, nothing more.
 *
 *     offset  size  field
 *     0       8     magic "BLKSNCBT"
 *     8       4     format version (1), little-endian
 *     12      4     H: length of the JSON header, little-endian
 *     16      32    sha256 of everything from offset 48 to the end of the file
 *     48      H     JSON header (CbtStateHeader, UTF-8)
 *     48+H    N     the active map, one byte per block (N = block_count when the
 *                   state is "clean", 0 when it is "in-use")
 *
 * A mount rewrites the file as "in-use" (no map) before it accepts the first origin
 * write, and as "clean" with the map at a clean shutdown; a crash leaves it "in-use".
 * A shutdown that saw the origin written outside the mount writes "unproven" (no map)
 * with `unproven` saying what was seen: the next mount starts a new generation.
 * Every write is atomic: a temporary file in the same directory, fsync, rename over
 * the old one, fsync of the directory. So the file is always one whole version, and a
 * damaged one (a flipped byte, a truncation) fails the checksum.
 *
 * A file that does not carry the magic is somebody else's: it is refused, never
 * overwritten (a mistyped cbt_state must not destroy data). One damaged byte in the
 * magic still counts as ours, so damage anywhere reads as "invalid", not "foreign".
 */
import { createHash } from 'node:crypto';
import { constants as fsc, promises as fsp } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { BlksnapError, asBlksnapError } from '../errors.js';
import type { OriginFingerprint } from './origin-fingerprint.js';

const MAGIC = Buffer.from('BLKSNCBT', 'latin1');
const VERSION = 1;
const PREFIX = 48;
/** A header is a few hundred bytes; anything much larger is damage. */
const MAX_HEADER = 64 * 1024;

export type CbtStateFlag = 'clean' | 'in-use' | 'unproven';

export interface CbtStateHeader {
  state: CbtStateFlag;
  /** With "unproven": why the map cannot be trusted (a write outside the mount was seen). */
  unproven?: string;
  block_size: number;
  block_count: number;
  generation_id: string;
  generation_started: string;
  generation_reason: string;
  /** The number the open period writes (the next snapshot's changes_number). */
  active_number: number;
  saved_at: string;
  origin_path: string;
  origin: OriginFingerprint;
}

export interface CbtState {
  header: CbtStateHeader;
  /** The active map when clean; empty otherwise. */
  map: Uint8Array;
}

export type LoadedCbtState =
  | { kind: 'missing' }
  | { kind: 'invalid'; why: string; bytes: Buffer }
  | { kind: 'ok'; state: CbtState; bytes: Buffer };

export function encodeCbtState(state: CbtState): Buffer {
  const header = Buffer.from(JSON.stringify(state.header), 'utf8');
  const out = Buffer.alloc(PREFIX + header.length + state.map.length);
  MAGIC.copy(out, 0);
  out.writeUInt32LE(VERSION, 8);
  out.writeUInt32LE(header.length, 12);
  header.copy(out, PREFIX);
  out.set(state.map, PREFIX + header.length);
  createHash('sha256').update(out.subarray(PREFIX)).digest().copy(out, 16);
  return out;
}

/** True when `bytes` look like one of our state files (or what is left of one). */
export function looksLikeCbtState(bytes: Buffer): boolean {
  let differing = 0;
  const n = Math.min(bytes.length, MAGIC.length);
  for (let i = 0; i < n; i++) if (bytes[i] !== MAGIC[i]) differing++;
  return differing <= 1;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkHeader(h: unknown): string | null {
  if (!isObject(h)) return 'the header is not a JSON object';
  if (h['state'] !== 'clean' && h['state'] !== 'in-use' && h['state'] !== 'unproven') return 'bad state flag';
  if (h['unproven'] !== undefined && typeof h['unproven'] !== 'string') return 'bad unproven';
  for (const k of ['block_size', 'block_count', 'active_number']) {
    if (!Number.isSafeInteger(h[k]) || (h[k] as number) < 0) return `bad ${k}`;
  }
  for (const k of ['generation_id', 'generation_started', 'generation_reason', 'saved_at', 'origin_path']) {
    if (typeof h[k] !== 'string') return `bad ${k}`;
  }
  if (!isObject(h['origin']) || typeof h['origin']['kind'] !== 'string' || !Number.isSafeInteger(h['origin']['size'])) return 'bad origin';
  return null;
}

/** Decode and check a state file's bytes: checksum, version, header, map length. */
export function decodeCbtState(bytes: Buffer): { state: CbtState } | { why: string } {
  if (bytes.length < PREFIX) return { why: `${bytes.length} bytes is too short to be a state file` };
  if (!bytes.subarray(0, MAGIC.length).equals(MAGIC)) return { why: 'bad magic' };
  const expected = createHash('sha256').update(bytes.subarray(PREFIX)).digest();
  if (!expected.equals(bytes.subarray(16, PREFIX))) return { why: 'checksum mismatch' };
  if (bytes.readUInt32LE(8) !== VERSION) return { why: `format version ${bytes.readUInt32LE(8)} is not ${VERSION}` };
  const headerLength = bytes.readUInt32LE(12);
  if (headerLength > MAX_HEADER || PREFIX + headerLength > bytes.length) return { why: 'bad header length' };
  let header: unknown;
  try {
    header = JSON.parse(bytes.subarray(PREFIX, PREFIX + headerLength).toString('utf8'));
  } catch {
    return { why: 'the header is not JSON' };
  }
  const bad = checkHeader(header);
  if (bad !== null) return { why: bad };
  const h = header as CbtStateHeader;
  const map = bytes.subarray(PREFIX + headerLength);
  const mapLength = h.state === 'clean' ? h.block_count : 0;
  if (map.length !== mapLength) return { why: `the map has ${map.length} bytes, not ${mapLength}` };
  return { state: { header: h, map: new Uint8Array(map.buffer, map.byteOffset, map.length) } };
}

/**
 * Read the state at `path`. A missing file is "missing"; a damaged one "invalid"
 * (the caller starts a new generation and overwrites it); a file that is not ours at
 * all is refused with EEXIST.
 */
export async function loadCbtState(path: string): Promise<LoadedCbtState> {
  let bytes: Buffer;
  try {
    const st = await fsp.lstat(path);
    if (!st.isFile()) throw BlksnapError.of('EINVAL', `change-tracking state ${path} is not a regular file`);
    bytes = await fsp.readFile(path);
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') return { kind: 'missing' };
    throw asBlksnapError(err, `cannot read change-tracking state ${path}`);
  }
  if (!looksLikeCbtState(bytes)) {
    throw BlksnapError.of('EEXIST', `change-tracking state ${path} exists and is not a blksnapfs state file; it was left untouched`);
  }
  const decoded = decodeCbtState(bytes);
  return 'why' in decoded ? { kind: 'invalid', why: decoded.why, bytes } : { kind: 'ok', state: decoded.state, bytes };
}

/** Replace the file at `path` with `bytes`, atomically and durably. */
export async function writeFileAtomically(path: string, bytes: Buffer): Promise<void> {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${process.pid}.tmp`);
  let fh: fsp.FileHandle | null = null;
  try {
    fh = await fsp.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
    await fh.writeFile(bytes);
    await fh.sync();
    await fh.close();
    fh = null;
    await fsp.rename(tmp, path);
  } catch (err) {
    await fh?.close().catch(() => undefined);
    await fsp.rm(tmp, { force: true }).catch(() => undefined);
    throw asBlksnapError(err, `cannot write change-tracking state ${path}`);
  }
  const d = await fsp.open(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
  try {
    await d.sync();
  } catch (err) {
    throw asBlksnapError(err, `cannot sync directory ${dir}`);
  } finally {
    await d.close();
  }
}

export async function saveCbtState(path: string, state: CbtState): Promise<void> {
  await writeFileAtomically(path, encodeCbtState(state));
}
