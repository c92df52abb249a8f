/**
 * The daemon: open the origin, the difference storage and the engine, mount the tree,
 * serve until unmounted, then close in a stated order (unmount -> drain writes ->
 * difference storage -> origin).
 *
 * Start-up either finishes with a live mount or undoes everything it did: a
 * difference-storage file it created is removed, the origin is closed, nothing stays
 * mounted.
 */
import { promises as fsp } from 'node:fs';
import { basename, resolve } from 'node:path';
import type { Logger as PinoLogger } from 'pino';
import { BlksnapError, asBlksnapError } from '../errors.js';
import { SnapshotEngine } from '../engine/engine.js';
import { EventQueue, formatEvent } from '../engine/event-queue.js';
import { ChangeTracker } from '../engine/change-tracker.js';
import { deriveGeometry } from '../engine/geometry.js';
import { OriginDevice } from '../storage/origin-device.js';
import { DiffStorage } from '../storage/diff-storage.js';
import { StorageGrowth } from '../storage/storage-growth.js';
import { DiffStorageFile } from '../storage/diff-storage-file.js';
import { checkOpenedStorage, checkStoragePath } from '../storage/storage-path-policy.js';
import { appendStorage } from './storage-append.js';
import { alignUp } from '../storage/aligned.js';
import { formatSize } from '../sizes.js';
import { Tree } from '../views/tree.js';
import { HandleTable } from '../views/handles.js';
import { createFuseOps } from '../fuse/adapter.js';
import { FuseMount, isMounted } from '../fuse/mount.js';
import type { MountOptions } from './options.js';

const MIN_DEFAULT_DIFF = 64 * 2 ** 20;
const MAX_DEFAULT_THRESHOLD = 512 * 2 ** 20;

export function defaultDiffStoragePath(origin: OriginDevice): string {
  return origin.identity.kind === 'file'
    ? `${origin.identity.path}.diff`
    : `/var/tmp/blksnapfs-${basename(origin.identity.path)}.diff`;
}

async function checkMountpoint(mountpoint: string): Promise<void> {
  let st;
  try {
    st = await fsp.stat(mountpoint);
  } catch (err) {
    throw asBlksnapError(err, `mount point ${mountpoint}`);
  }
  if (!st.isDirectory()) throw BlksnapError.of('ENOTDIR', `mount point ${mountpoint} is not a directory`);
  if (await isMounted(mountpoint)) throw BlksnapError.of('EBUSY', `mount point ${mountpoint} is already a mount point`);
}

export class Daemon {
  private stopping: Promise<void> | null = null;

  private constructor(
    readonly engine: SnapshotEngine,
    readonly fuse: FuseMount,
    private readonly handles: HandleTable,
    private readonly log: PinoLogger,
  ) {}

  static async start(originPath: string, mountpointArg: string, opts: MountOptions, log: PinoLogger): Promise<Daemon> {
    const mountpoint = resolve(mountpointArg);
    if (opts.diffGrow !== undefined && opts.diffLimit === undefined) {
      throw BlksnapError.of('EINVAL', 'diff_grow needs diff_limit (the size automatic growth may reach)');
    }
    const origin = await OriginDevice.open(resolve(originPath), { readOnly: opts.readOnly });
    let storageFile: DiffStorageFile | null = null;
    try {
      await checkMountpoint(mountpoint);
      const geometry = deriveGeometry(origin.size, opts.chunkSize, opts.blockSize);
      const guard = { origin: origin.identity, mountpoint };
      const storagePath = await checkStoragePath(opts.diffStorage ?? defaultDiffStoragePath(origin), guard);
      const diffSize = alignUp(opts.diffSize ?? Math.max(MIN_DEFAULT_DIFF, Math.ceil(origin.size / 10)), geometry.chunkSize);
      storageFile = await DiffStorageFile.open(storagePath, diffSize, {
        existing: 'empty-or-marked',
        checkPlace: (st) => checkOpenedStorage(storagePath, st, guard),
      });
      if (storageFile.size < geometry.chunkSize) {
        throw BlksnapError.of('EINVAL', `difference storage (${storageFile.size} bytes) is smaller than one chunk (${geometry.chunkSize})`);
      }
      const threshold = opts.diffThreshold ?? Math.min(MAX_DEFAULT_THRESHOLD, Math.floor(storageFile.size / 2));
      const storage = new DiffStorage(geometry.chunkSize, threshold);
      storage.addFile(storageFile);

      const events = new EventQueue(opts.eventBacklog);
      events.onEvent = (e) => log.info({ event: JSON.parse(formatEvent(e)) as object }, `event ${e.type}`);
      if (opts.diffLimit !== undefined) {
        if (opts.diffLimit < storage.sizeBytes) {
          throw BlksnapError.of('EINVAL', `diff_limit (${formatSize(opts.diffLimit)}) is smaller than the difference storage (${formatSize(storage.sizeBytes)})`);
        }
        const step = alignUp(opts.diffGrow ?? Math.max(threshold, 1), geometry.chunkSize);
        const growth = new StorageGrowth(storage, opts.diffLimit, step);
        growth.onGrown = ({ file, bytes, total }) => events.emit('storage-grown', { path: file.path, bytes, total });
        growth.onError = (err) => log.warn({ err: err instanceof Error ? err.message : String(err) }, 'cannot grow the difference storage');
        storage.manager = growth;
      }
      const tracker = new ChangeTracker(geometry.blockSize, geometry.blockCount);
      const engine = new SnapshotEngine({ origin, storage, geometry, events, tracker, logger: log });
      const handles = new HandleTable();
      // Who owns the mount, for the root-only commands (caller-policy.ts).
      const owner = { daemonUid: process.getuid?.() ?? -1, uidOption: opts.uid };
      const tree = new Tree({
        engine,
        facts: { mountpoint, pid: process.pid, mountedAt: new Date(), readOnly: opts.readOnly },
        uid: opts.uid ?? process.getuid?.() ?? 0,
        gid: opts.gid ?? process.getgid?.() ?? 0,
        commands: {
          storageAppend: (path, size, ctx) => appendStorage({ engine, mountpoint, owner }, path, size, ctx).catch((err: unknown) => {
            // The writer of /control sees only the errno; the reason goes to the log.
            log.warn({ path, size, err: err instanceof Error ? err.message : String(err) }, 'storage-append refused');
            throw err;
          }),
          cbtDirty: (offset, length) => engine.markDirty(offset, length),
        },
      });
      const ops = createFuseOps({ tree, handles, log });
      const fuse = await FuseMount.mount(mountpoint, ops, {
        fsname: origin.identity.path,
        allowOther: opts.allowOther,
        defaultPermissions: opts.defaultPermissions,
        ...(opts.uid !== undefined ? { uid: opts.uid } : {}),
        ...(opts.gid !== undefined ? { gid: opts.gid } : {}),
      });
      log.info({ origin: origin.identity, mountpoint, geometry, diff_storage: storage.stats() }, 'mounted');
      return new Daemon(engine, fuse, handles, log);
    } catch (err) {
      if (storageFile !== null) await storageFile.close().catch(() => undefined);
      await origin.close().catch(() => undefined);
      throw err;
    }
  }

  /** Serve until the mount goes away (umount, fusermount -u), then close everything. */
  async run(): Promise<void> {
    await this.fuse.whenUnmounted();
    await this.stop();
  }

  /** Unmount if still mounted, then close. EBUSY (in use) leaves everything running. */
  async requestUnmount(): Promise<void> {
    await this.fuse.unmount();
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.log.info({ open_files: this.handles.size }, 'unmounted; closing');
      await this.engine.close();
      this.log.info({}, 'closed');
    })();
    return this.stopping;
  }
}
