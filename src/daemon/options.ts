/**
 * Mount options: one table serves `-o a_b=1` (mount.blksnapfs, mount -t, fstab) and
 * `--a-b 1` (blksnapfs mount). Parsing checks every value before anything is opened
 * or created; a bad option is one clear error and exit status 1.
 */
import { resolve } from 'node:path';
import { BlksnapError } from '../errors.js';
import { parseSize } from '../sizes.js';
import { checkUnit } from '../engine/geometry.js';
import { MAX_EVENT_BACKLOG, MIN_EVENT_BACKLOG } from '../engine/event-queue.js';
import { TRANSPORTS, type TransportName } from '../fuse/transport.js';

export type OptionKind = 'flag' | 'size' | 'path' | 'uint' | 'level' | 'unit' | 'transport' | 'switch';

export interface OptionSpec {
  name: string;
  kind: OptionKind;
  help: string;
}

export const OPTION_TABLE: readonly OptionSpec[] = [
  { name: 'diff_storage', kind: 'path', help: 'difference storage file; created and preallocated if missing (default: ORIGIN.diff for an image file, /var/tmp/blksnapfs-NAME.diff for a block device)' },
  { name: 'diff_size', kind: 'size', help: 'bytes to preallocate for the difference storage (default: 10% of the origin, at least 64M)' },
  { name: 'diff_threshold', kind: 'size', help: 'raise low-free-space when free space falls below this (default: half of diff_size, at most 512M)' },
  { name: 'diff_limit', kind: 'size', help: 'let the daemon grow the difference storage by itself, up to this total size (default: no automatic growth)' },
  { name: 'diff_grow', kind: 'size', help: 'step of automatic growth; needs diff_limit (default: diff_threshold)' },
  { name: 'event_backlog', kind: 'uint', help: 'events kept for /events readers that fall behind or start late (default: 1024)' },
  { name: 'chunk_size', kind: 'unit', help: 'copy-on-write unit, a power of two >= 4K (default: 64K, larger for origins over 128G)' },
  { name: 'block_size', kind: 'unit', help: 'change-tracking block, a power of two >= 4K (default: 64K, larger for origins over 128G)' },
  { name: 'cbt_state', kind: 'path', help: 'where change tracking is kept between mounts (default: ORIGIN.cbt for an image file, /var/lib/blksnapfs/dev-NAME.cbt for a block device)' },
  { name: 'cbt_trust', kind: 'flag', help: "resume a block device's change tracking after a reboot or re-attach (you vouch that nothing writes it outside the mount)" },
  { name: 'ro', kind: 'flag', help: 'the origin is read-only through the mount' },
  { name: 'allow_other', kind: 'flag', help: 'let other users use the mount, as the modes allow (the kernel always checks them)' },
  { name: 'default_permissions', kind: 'flag', help: 'accepted for compatibility: the kernel always checks file modes' },
  { name: 'uid', kind: 'uint', help: 'owner of the files in the mount' },
  { name: 'gid', kind: 'uint', help: 'group of the files in the mount' },
  { name: 'transport', kind: 'transport', help: 'the FUSE binding: libfuse3 (asynchronous, the default) or fuse-native (libfuse 2, compatibility)' },
  { name: 'fast_path', kind: 'switch', help: 'on (the default with libfuse3): origin reads and writes that need no copy are served natively, without JavaScript; off: every request goes through the engine (for comparison and diagnosis)' },
  { name: 'foreground', kind: 'flag', help: 'stay in the foreground and log to stderr' },
  { name: 'log', kind: 'path', help: 'append pino JSON logs to this file' },
  { name: 'log_level', kind: 'level', help: 'fatal, error, warn, info, debug or trace (default: info)' },
];

/** Options mount(8) and fstab pass along that mean nothing to us: accepted, ignored. */
const GENERIC = new Set([
  'rw', 'defaults', 'nofail', '_netdev', 'noauto', 'auto', 'user', 'users', 'nouser', 'owner', 'group',
  'exec', 'noexec', 'suid', 'nosuid', 'dev', 'nodev', 'async', 'atime', 'noatime', 'relatime',
  'nodiratime', 'diratime', 'strictatime', 'lazytime', 'nolazytime', 'silent', 'loud',
]);
const LEVELS = new Set(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']);

export interface MountOptions {
  diffStorage?: string;
  diffSize?: number;
  diffThreshold?: number;
  diffLimit?: number;
  diffGrow?: number;
  eventBacklog?: number;
  chunkSize?: number;
  blockSize?: number;
  cbtState?: string;
  cbtTrust: boolean;
  readOnly: boolean;
  allowOther: boolean;
  defaultPermissions: boolean;
  uid?: number;
  gid?: number;
  transport: TransportName;
  fastPath: boolean;
  foreground: boolean;
  log?: string;
  logLevel: string;
}

export function emptyOptions(): MountOptions {
  return { cbtTrust: false, readOnly: false, allowOther: false, defaultPermissions: false, transport: 'libfuse3', fastPath: true, foreground: false, logLevel: 'info' };
}

function bad(message: string): never {
  throw BlksnapError.of('EINVAL', message);
}

/** Apply one option (name as in the table, value as the user wrote it). */
export function applyOption(opts: MountOptions, name: string, value: string | undefined): void {
  const spec = OPTION_TABLE.find((o) => o.name === name);
  if (spec === undefined) {
    if (GENERIC.has(name) || name.startsWith('x-') || name.startsWith('comment=') || name === 'comment') return;
    bad(`unknown option "${name}" (see blksnapfs mount --help)`);
  }
  if (spec.kind === 'flag') {
    if (value !== undefined) bad(`option ${name} takes no value`);
  } else if (value === undefined || value === '') {
    bad(`option ${name} needs a value (${name}=...)`);
  }
  const v = value ?? '';
  switch (name) {
    case 'diff_storage': opts.diffStorage = resolve(v); break;
    case 'diff_size': opts.diffSize = parseSize(v); break;
    case 'diff_threshold': opts.diffThreshold = parseSize(v); break;
    case 'diff_limit': opts.diffLimit = parseSize(v); break;
    case 'diff_grow': opts.diffGrow = parseSize(v); break;
    case 'event_backlog': {
      const n = /^\d+$/.test(v) ? Number(v) : NaN;
      if (!(n >= MIN_EVENT_BACKLOG && n <= MAX_EVENT_BACKLOG)) bad(`event_backlog must be a whole number from ${MIN_EVENT_BACKLOG} to ${MAX_EVENT_BACKLOG}`);
      opts.eventBacklog = n;
      break;
    }
    case 'chunk_size': opts.chunkSize = checkUnit('chunk_size', parseSize(v)); break;
    case 'block_size': opts.blockSize = checkUnit('block_size', parseSize(v)); break;
    case 'cbt_state': opts.cbtState = resolve(v); break;
    case 'cbt_trust': opts.cbtTrust = true; break;
    case 'ro': opts.readOnly = true; break;
    case 'allow_other': opts.allowOther = true; break;
    case 'default_permissions': opts.defaultPermissions = true; break;
    case 'uid':
    case 'gid': {
      if (!/^\d+$/.test(v)) bad(`option ${name} must be a number`);
      opts[name] = Number(v);
      break;
    }
    case 'transport': {
      const t = TRANSPORTS.find((name) => name === v);
      if (t === undefined) bad(`transport must be one of ${TRANSPORTS.join(', ')}`);
      opts.transport = t;
      break;
    }
    case 'fast_path':
      if (v !== 'on' && v !== 'off') bad('fast_path must be on or off');
      opts.fastPath = v === 'on';
      break;
    case 'foreground': opts.foreground = true; break;
    case 'log': opts.log = resolve(v); break;
    case 'log_level':
      if (!LEVELS.has(v)) bad(`log_level must be one of ${[...LEVELS].join(', ')}`);
      opts.logLevel = v;
      break;
  }
}

/** Parse a mount(8)-style option string: "a,b=1,c" (a backslash escapes a comma). */
export function parseOptionString(opts: MountOptions, text: string): void {
  for (const item of text.split(/(?<!\\),/)) {
    const trimmed = item.trim().replace(/\\,/g, ',');
    if (trimmed.length === 0) continue;
    const eq = trimmed.indexOf('=');
    applyOption(opts, eq < 0 ? trimmed : trimmed.slice(0, eq), eq < 0 ? undefined : trimmed.slice(eq + 1));
  }
}

/** The option string that reproduces `opts` (used to hand them to the daemon process). */
export function toOptionString(opts: MountOptions): string {
  const out: string[] = [];
  const esc = (s: string): string => s.replace(/,/g, '\\,');
  if (opts.diffStorage !== undefined) out.push(`diff_storage=${esc(opts.diffStorage)}`);
  if (opts.diffSize !== undefined) out.push(`diff_size=${opts.diffSize}`);
  if (opts.diffThreshold !== undefined) out.push(`diff_threshold=${opts.diffThreshold}`);
  if (opts.diffLimit !== undefined) out.push(`diff_limit=${opts.diffLimit}`);
  if (opts.diffGrow !== undefined) out.push(`diff_grow=${opts.diffGrow}`);
  if (opts.eventBacklog !== undefined) out.push(`event_backlog=${opts.eventBacklog}`);
  if (opts.chunkSize !== undefined) out.push(`chunk_size=${opts.chunkSize}`);
  if (opts.blockSize !== undefined) out.push(`block_size=${opts.blockSize}`);
  if (opts.cbtState !== undefined) out.push(`cbt_state=${esc(opts.cbtState)}`);
  if (opts.cbtTrust) out.push('cbt_trust');
  if (opts.readOnly) out.push('ro');
  if (opts.allowOther) out.push('allow_other');
  if (opts.defaultPermissions) out.push('default_permissions');
  if (opts.uid !== undefined) out.push(`uid=${opts.uid}`);
  if (opts.gid !== undefined) out.push(`gid=${opts.gid}`);
  out.push(`transport=${opts.transport}`);
  out.push(`fast_path=${opts.fastPath ? 'on' : 'off'}`);
  if (opts.foreground) out.push('foreground');
  if (opts.log !== undefined) out.push(`log=${esc(opts.log)}`);
  out.push(`log_level=${opts.logLevel}`);
  return out.join(',');
}
