/**
 * storage-append: a new preallocated file joins the difference storage while snapshots
 * are held. Root only (caller-policy.ts). Every refusal leaves everything as it was (see
 * docs/events-and-storage.md for the errno of each): nothing is created, and an
 * existing file keeps its contents.
 */
import { isAbsolute } from 'node:path';
import { BlksnapError } from '../errors.js';
import type { SnapshotEngine } from '../engine/engine.js';
import { DiffStorageFile } from '../storage/diff-storage-file.js';
import { checkOpenedStorage, checkStoragePath } from '../storage/storage-path-policy.js';
import { alignUp } from '../storage/aligned.js';
import type { RequestContext } from '../views/file-view.js';
import { type MountOwner, requireRootCaller } from '../views/caller-policy.js';

export interface AppendTarget {
  engine: SnapshotEngine;
  mountpoint: string;
  owner: MountOwner;
}

export async function appendStorage({ engine, mountpoint, owner }: AppendTarget, path: string, size: number, ctx: RequestContext): Promise<void> {
  requireRootCaller(ctx, owner, 'storage-append');
  if (path.includes('\0')) throw BlksnapError.of('EINVAL', 'storage-append: a path cannot hold a NUL byte');
  if (!isAbsolute(path)) throw BlksnapError.of('EINVAL', `storage-append needs an absolute path, not "${path}"`);
  const guard = { origin: engine.origin.identity, mountpoint };
  const abs = await checkStoragePath(path, guard);
  if (engine.storage.files.some((f) => f.path === abs)) throw BlksnapError.of('EEXIST', `${abs} is already part of the difference storage`);
  const file = await DiffStorageFile.open(abs, alignUp(size, engine.geometry.chunkSize), {
    existing: 'empty',
    checkPlace: (st) => checkOpenedStorage(abs, st, guard),
  });
  engine.storage.addFile(file);
  engine.events.emit('storage-appended', { path: abs, bytes: file.size });
}
