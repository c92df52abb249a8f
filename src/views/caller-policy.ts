/**
 * Who may run the commands that take a path (storage-append): root only, whoever owns
 * the mount. Such a command makes the daemon create and fill a file wherever the path
 * says, with the daemon's rights; when the daemon runs as root and the mount is handed
 * to a user (`-o uid=`), letting that user name the path would hand him root's rights
 * over every directory (a root-owned file in /root, filled with bytes he chose).
 *
 * The caller is known when the transport gives each request its credentials (libfuse 3).
 * When it cannot (fuse-native: `known` is false), the writer of /control can only be the
 * mount's owner or root, since /control is owner-only and the kernel checks modes; so
 * the command is allowed only when that owner is root: the daemon runs as root and no
 * `uid=` gives the files to somebody else.
 */
import { BlksnapError } from '../errors.js';
import type { RequestContext } from './file-view.js';

/** What the daemon knows about the mount's owner. */
export interface MountOwner {
  /** The daemon's own uid (process.getuid()). */
  readonly daemonUid: number;
  /** The `uid=` mount option, if given. */
  readonly uidOption: number | undefined;
}

/** True when the mount's files belong to root. */
export function ownedByRoot(owner: MountOwner): boolean {
  return owner.daemonUid === 0 && (owner.uidOption === undefined || owner.uidOption === 0);
}

/** EPERM unless the caller is root (or, when the caller is unknown, the owner is root). */
export function requireRootCaller(ctx: RequestContext, owner: MountOwner, what: string): void {
  if (ctx.known) {
    if (ctx.uid !== 0) throw BlksnapError.of('EPERM', `${what}: only root may do this (the caller is uid ${ctx.uid})`);
    return;
  }
  if (!ownedByRoot(owner)) {
    const whose = owner.daemonUid !== 0 ? `the daemon runs as uid ${owner.daemonUid}` : `the mount belongs to uid ${owner.uidOption ?? '?'}`;
    throw BlksnapError.of('EPERM', `${what}: only root may do this, and this transport cannot tell who is calling while ${whose}`);
  }
}
