/**
 * The daemon: open the origin, the difference storage and the engine, mount the tree,
 * serve until unmounted, then close in the contract's order (unmount -> drain writes ->
 * datasync the origin -> save change tracking -> difference storage -> origin).
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
import { deriveGeometry } from '../engine/geometry.js';
import { OriginDevice } from '../storage/origin-device.js';
import { DiffStorage } from '../storage/diff-storage.js';
import { StorageGrowth } from '../storage/storage-growth.js';
import { DiffStorageFile } from '../storage/diff-storage-file.js';
import { checkOpenedStorage, checkStoragePath } from '../storage/storage-path-policy.js';
import { appendStorage } from './storage-append.js';
import { alignUp } from '../storage/aligned.js';
import { formatSize } from '../sizes.js';
import { MountTree } from '../views/tree.js';
import { transportByName } from '../fuse/transports.js';
import type { FuseSession } from '../fuse/transport.js';
import { isMounted } from '../fuse/mountinfo.js';
import type { MountOptions } from './options.js';
import { openOriginWhenFree } from './origin-wait.js';
import { onLogFailure } from './logger.js';
import { CbtPersistence } from './cbt-persistence.js';
import { OutsideWriteWatch } from './outside-write-watch.js';
import { NativeWriteTally, serveOriginNatively } from './fast-path.js';
import { sumOfAccountings } from '../engine/origin-write-accounting.js';

const MIN_DEFAULT_DIFF = 64 * 2 ** 20;
const MAX_DEFAULT_THRESHOLD = 512 * 2 ** 20;

export function defaultDiffStoragePath(origin: OriginDevice): string {
  return origin.identity.kind === 'file'
    ? `${origin.identity.path}.diff`
    : `/var/tmp/blksnapfs-${basename(origin.identity.path)}.diff`;
}

/**
 * The mount point as the kernel will name it (symlinks resolved: mountinfo shows the
 * real path), checked to be a directory that is not a mount point already.
 */
async function realMountpoint(mountpoint: string): Promise<string> {
  let real: string;
  try {
    real = await fsp.realpath(mountpoint);
  } catch (err) {
    throw asBlksnapError(err, `mount point ${mountpoint}`);
  }
  const st = await fsp.stat(real);
  if (!st.isDirectory()) throw BlksnapError.of('ENOTDIR', `mount point ${mountpoint} is not a directory`);
  if (await isMounted(real)) throw BlksnapError.of('EBUSY', `mount point ${mountpoint} is already a mount point`);
  return real;
}

export class Daemon {
  private stopping: Promise<void> | null = null;

  private constructor(
    readonly engine: SnapshotEngine,
    readonly session: FuseSession,
    private readonly tree: MountTree,
    private readonly log: PinoLogger,
    private readonly cbt: CbtPersistence,
    private readonly outside: OutsideWriteWatch,
  ) {}

  static async start(originPath: string, mountpointArg: string, opts: MountOptions, log: PinoLogger): Promise<Daemon> {
    const mountpoint = await realMountpoint(resolve(mountpointArg));
    if (opts.diffGrow !== undefined && opts.diffLimit === undefined) {
      throw BlksnapError.of('EINVAL', 'diff_grow needs diff_limit (the size automatic growth may reach)');
    }
    const origin = await openOriginWhenFree(resolve(originPath), { readOnly: opts.readOnly });
    let storageFile: DiffStorageFile | null = null;
    let cbt: CbtPersistence | null = null;
    let outside: OutsideWriteWatch | null = null;
    try {
      const geometry = deriveGeometry(origin.size, opts.chunkSize, opts.blockSize);
      const guard = { origin: origin.identity, mountpoint };
      const storagePath = await checkStoragePath(opts.diffStorage ?? defaultDiffStoragePath(origin), guard);
      cbt = await CbtPersistence.open({ path: opts.cbtState, trust: opts.cbtTrust, origin, mountpoint, diffStoragePath: storagePath, geometry, log });
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
      // The log is best effort: its first failure is news for whoever follows the events.
      onLogFailure(log, ({ error, message }) => events.emit('log-failed', { error, message }));
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
      const tracker = cbt.tracker;
      const engine = new SnapshotEngine({ origin, storage, geometry, events, tracker, logger: log });
      if (cbt.resetReason !== null) events.emit('cbt-reset', { generation_id: tracker.generationId, reason: cbt.resetReason });
      // Writes to the origin that do not come through the mount end continuity (outside-write-watch.ts).
      // Every writer of the origin in this process is tallied: the engine's and the fast path's.
      const nativeWrites = new NativeWriteTally();
      const watch = await OutsideWriteWatch.start({
        origin,
        accounting: sumOfAccountings([engine.originWrites, nativeWrites]),
        log,
        onDetected: (d) => engine.originWrittenOutside(d.detail),
      });
      outside = watch;
      engine.beforeTake = async () => {
        await watch.checkNow();
      };
      let session: FuseSession | null = null;
      // Who owns the mount, for the root-only commands (caller-policy.ts).
      const owner = { daemonUid: process.getuid?.() ?? -1, uidOption: opts.uid };
      const tree = new MountTree({
        engine,
        log,
        facts: {
          mountpoint, pid: process.pid, mountedAt: new Date(), readOnly: opts.readOnly,
          transport: () => session?.stats() ?? null,
          outsideWrites: () => watch.status(),
        },
        uid: opts.uid ?? process.getuid?.() ?? 0,
        gid: opts.gid ?? process.getgid?.() ?? 0,
        commands: {
          storageAppend: (path, size, ctx) => appendStorage({ engine, mountpoint, owner }, path, size, ctx).catch((err: unknown) => {
            // The writer of /control sees only the errno; the reason goes to the log.
            log.warn({ path, size, err: err instanceof Error ? err.message : String(err) }, 'storage-append refused');
            throw err;
          }),
          cbtDirty: (offset, length) => engine.markDirty(offset, length),
          freeze: (ms, token) => engine.freezer.freeze(ms, token),
          thaw: (token) => engine.freezer.thaw(token),
        },
      });
      await cbt.markInUse(); // before the mount goes live, so before the first origin write
      session = await transportByName(opts.transport).mount(tree, {
        mountpoint,
        fsname: origin.identity.path,
        allowOther: opts.allowOther,
      }, log);
      if (opts.fastPath) serveOriginNatively(engine, session, log, nativeWrites);
      log.info({ origin: origin.identity, mountpoint, geometry, diff_storage: storage.stats(), transport: opts.transport }, 'mounted');
      return new Daemon(engine, session, tree, log, cbt, watch);
    } catch (err) {
      outside?.close();
      await cbt?.undoMark().catch((e: unknown) => log.warn({ err: e instanceof Error ? e.message : String(e) }, 'cannot restore the change-tracking state'));
      if (storageFile !== null) await storageFile.close().catch(() => undefined);
      await origin.close().catch(() => undefined);
      throw err;
    }
  }

  /**
   * Serve until the FUSE session ends (umount, fusermount -u, or umount -l and the last
   * open file closed), then close everything and stop the transport. The daemon never
   * decides to stop by looking at paths.
   */
  async run(): Promise<void> {
    await this.session.ended;
    await this.stop();
    await this.session.close();
  }

  /**
   * SIGTERM: unmount our own mount; the session then ends and run() closes. EBUSY (in
   * use) leaves everything running. If our mount is no longer at the mount point
   * (umount -l, or another mount over it), the transport ends our session without
   * unmounting anything (src/fuse/transport.ts).
   */
  async requestUnmount(): Promise<void> {
    await this.session.unmount();
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.log.info({ open_files: this.tree.handles.size }, 'unmounted; closing');
      try {
        await this.engine.close(async () => {
          // A failed save leaves the state "in-use": the next mount starts a new generation.
          await this.cbt.save(await this.outside.finalCheck()).catch((err: unknown) => {
            this.log.error({ cbt_state: this.cbt.path, err: err instanceof Error ? err.message : String(err) }, 'cannot save change tracking; the next mount starts a new generation');
          });
        });
      } finally {
        this.outside.close();
      }
      this.log.info({}, 'closed');
    })();
    return this.stopping;
  }
}
