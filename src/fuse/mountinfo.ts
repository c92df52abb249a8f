/**
 * Reading /proc/self/mountinfo, never the mount itself (touching a mount of our own
 * from the daemon's thread could wait for a request only that thread answers).
 */
import { readFile } from 'node:fs/promises';

/** mountinfo escapes space, tab, newline and backslash as \ooo. */
export function escapeMountPath(path: string): string {
  return path.replace(/[ \t\n\\]/g, (c) => `\\${c.charCodeAt(0).toString(8).padStart(3, '0')}`);
}

export interface MountEntry {
  /** major:minor of the mounted file system. */
  dev: string;
  mountpoint: string;
  fstype: string;
  source: string;
}

export async function readMounts(): Promise<MountEntry[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
    const fields = line.split(' ');
    const dash = fields.indexOf('-');
    if (dash < 0) continue;
    out.push({ dev: fields[2] ?? '', mountpoint: fields[4] ?? '', fstype: fields[dash + 1] ?? '', source: fields[dash + 2] ?? '' });
  }
  return out;
}

/** Is `mountpoint` (a real path, no symlinks) a mount point right now? */
export async function isMounted(mountpoint: string): Promise<boolean> {
  const escaped = escapeMountPath(mountpoint);
  return (await readMounts()).some((m) => m.mountpoint === escaped);
}
