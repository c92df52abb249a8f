/**
 * Mounting and unmounting the FUSE file system, and noticing when somebody else
 * (umount, fusermount -u) unmounted it.
 *
 * libfuse options, and why:
 * - direct_io: every read and write reaches the daemon. /events is a 0-byte stream that
 *   `cat` can only follow this way, images of a reused name can never be served from a
 *   stale page cache, and /origin behaves like a block device (no double caching under a
 *   loop device). The cost: no kernel page cache for repeated reads (see docs/events-and-storage.md).
 * - big_writes, max_write, max_read: 128 KiB requests instead of 4 KiB ones.
 * - entry_timeout=0, negative_timeout=0: a snapshot name removed and taken again is
 *   looked up afresh, never from a cached dentry.
 * - auto_unmount: if the daemon dies, fusermount cleans the mount point up.
 */
import { readFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { BlksnapError } from '../errors.js';
import { createFuse, type FuseInstance, type FuseOps } from './fuse-native-binding.js';

const execFileP = promisify(execFile);

export interface FuseMountOptions {
  fsname: string;
  allowOther: boolean;
  defaultPermissions: boolean;
  uid?: number;
  gid?: number;
}

function escapeOption(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/,/g, '\\,');
}

export function libfuseOptions(o: FuseMountOptions): string[] {
  const opts = [
    `fsname=${escapeOption(o.fsname)}`,
    'subtype=blksnapfs',
    'auto_unmount',
    'direct_io',
    'big_writes',
    'max_write=131072',
    'max_read=131072',
    'entry_timeout=0',
    'negative_timeout=0',
    'attr_timeout=1',
  ];
  // With allow_other the kernel must enforce modes (/control is owner-only).
  if (o.allowOther) opts.push('allow_other', 'default_permissions');
  else if (o.defaultPermissions) opts.push('default_permissions');
  if (o.uid !== undefined) opts.push(`uid=${o.uid}`);
  if (o.gid !== undefined) opts.push(`gid=${o.gid}`);
  return opts;
}

/** Is `mountpoint` a mount point right now? (From /proc, never by touching the mount.) */
export async function isMounted(mountpoint: string): Promise<boolean> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const escaped = mountpoint.replace(/[ \t\n\\]/g, (c) => `\\${c.charCodeAt(0).toString(8).padStart(3, '0')}`);
  return text.split('\n').some((line) => line.split(' ')[4] === escaped);
}

export class FuseMount {
  private constructor(private readonly fuse: FuseInstance, readonly mountpoint: string) {}

  static mount(mountpoint: string, ops: FuseOps, options: FuseMountOptions): Promise<FuseMount> {
    const fuse = createFuse(mountpoint, ops, libfuseOptions(options));
    return new Promise((resolve, reject) => {
      try {
        fuse.mount((err) => {
          if (err) reject(BlksnapError.of('EIO', `cannot mount on ${mountpoint}: ${err.message}`, err));
          else resolve(new FuseMount(fuse, mountpoint));
        });
      } catch (err) {
        reject(BlksnapError.of('EIO', `cannot mount on ${mountpoint}: ${err instanceof Error ? err.message : String(err)}`, err));
      }
    });
  }

  /** Resolves once the mount point is no longer mounted (checked every `intervalMs`). */
  async whenUnmounted(intervalMs = 300): Promise<void> {
    for (;;) {
      await new Promise((r) => setTimeout(r, intervalMs));
      if (!(await isMounted(this.mountpoint))) return;
    }
  }

  /** Unmount, refusing (EBUSY) while files in it are in use, e.g. by a loop device. */
  async unmount(): Promise<void> {
    try {
      await execFileP('fusermount', ['-u', this.mountpoint]);
    } catch (err) {
      const stderr = (err as { stderr?: string }).stderr ?? '';
      if (/busy/i.test(stderr)) throw BlksnapError.of('EBUSY', `${this.mountpoint} is busy (a loop device or open file uses it)`);
      if (!(await isMounted(this.mountpoint))) return;
      throw BlksnapError.of('EIO', `cannot unmount ${this.mountpoint}: ${stderr.trim()}`);
    }
  }

}
