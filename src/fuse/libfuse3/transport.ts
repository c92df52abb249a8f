/**
 * The default transport: libfuse 3's low-level API through our addon. Requests arrive
 * in batches on the JavaScript thread; each is handed to the FileSystem and answered
 * exactly once, whenever its work is done, while the others proceed: many requests
 * are in flight at once, which is what makes queue depth pay.
 *
 * Exactly once: the addon refuses a second reply (and says so); here every path of a
 * request ends in one reply, an exception in a handler becomes EIO, and a rejected
 * promise its errno. News (id -1: forget, release, interrupt, end) is never answered,
 * whatever its handler does.
 *
 * The fast path: once attachFastPath is called, origin requests that need nothing from
 * the engine are answered by the addon's reader threads and never arrive here.
 */
import { BlksnapError } from '../../errors.js';
import type { Logger } from '../../engine/logger.js';
import { toNegativeErrno } from '../../views/errno.js';
import type { IoRequest, RequestContext } from '../../views/file-view.js';
import type { Attr, Entry, FileSystem, RefusedOp } from '../../views/filesystem.js';
import {
  escapeOptionValue, type FastPathSpec, type FuseSession, type MountConfig, type NativeFastPath, type Transport, type TransportStats,
} from '../transport.js';
import {
  ATTR_LENGTH, ENDED_BY_ABORT, F, FIELDS, loadAddon, Op, OPEN_DIRECT_IO, OPEN_KEEP_CACHE, OPEN_NONSEEKABLE, OPEN_PARALLEL_DIRECT_WRITES, SET_ATTR,
  type Fuse3Addon, type NativeSession,
} from './addon.js';

/**
 * The most reader threads (the addon starts two, and more while all are busy). Each
 * answers fast-path requests itself, so they are the fast path's parallelism (several
 * synchronous writers, a deep queue of slow origin I/O); for the requests that go to
 * JavaScript one would keep up (bench/README.md).
 */
const READERS = 16;

const REFUSED: Partial<Record<number, RefusedOp>> = {
  [Op.UNLINK]: 'unlink', [Op.RENAME]: 'rename', [Op.MKNOD]: 'mknod', [Op.SYMLINK]: 'symlink', [Op.LINK]: 'link', [Op.CREATE]: 'create',
};

/** A read or write as the views see it; an interrupt from the kernel reaches its listener. */
class Request implements IoRequest {
  readonly interruptible = true;
  private listener: (() => void) | null = null;
  interrupted = false;

  constructor(readonly ctx: RequestContext) {}

  onInterrupt(listener: () => void): void {
    if (this.interrupted) listener();
    else this.listener = listener;
  }

  interrupt(): void {
    this.interrupted = true;
    const l = this.listener;
    this.listener = null;
    l?.();
  }
}

function libfuseArgs(config: MountConfig): string[] {
  // One -o per option: nothing can be cut or lost from a long option string, and
  // default_permissions is always there (the kernel checks every access).
  const opts = [`fsname=${escapeOptionValue(config.fsname)}`, 'subtype=blksnapfs', 'default_permissions'];
  if (config.allowOther) opts.push('allow_other');
  return opts.flatMap((o) => ['-o', o]);
}

class Libfuse3Session implements FuseSession {
  readonly transport = 'libfuse3' as const;
  readonly ended: Promise<void>;
  private markEnded: () => void = () => undefined;
  private native: NativeSession | null = null;
  private closed = false;
  /** Reads not yet answered, by request id, for interrupts (which always come after their read). */
  private readonly waiting = new Map<number, Request>();
  private readonly attrScratch = new Float64Array(ATTR_LENGTH);
  /** The fast path's: who waits for native requests to leave (FAST_DRAINED news). */
  private fastDrained: (() => void) | null = null;
  private fastStopWaiters: Array<() => void> = [];

  constructor(private readonly addon: Fuse3Addon, private readonly fs: FileSystem, private readonly log: Logger, private readonly mountpoint: string) {
    this.ended = new Promise((resolve) => {
      this.markEnded = resolve;
    });
  }

  start(args: string[]): void {
    this.native = this.addon.mount(this.mountpoint, args, (nums, extras) => this.onBatch(nums, extras), READERS);
  }

  private get s(): NativeSession {
    if (this.native === null) throw new Error('session not started');
    return this.native;
  }

  // ---- dispatch -----------------------------------------------------------------

  private onBatch(nums: Float64Array, extras: Array<string | Buffer | undefined>): void {
    const count = nums.length / FIELDS;
    for (let i = 0; i < count; i++) {
      const o = i * FIELDS;
      const id = nums[o + F.id] ?? -1;
      try {
        if (id < 0) this.news(nums, o);
        else this.dispatch(id, nums, o, extras[i]);
      } catch (err) {
        // A synchronous throw: a request is answered here, with its errno (or EIO);
        // news has nobody to answer.
        if (id >= 0) this.fail(id, nums[o + F.op] ?? 0, err);
        else this.log.error({ op: nums[o + F.op], err: err instanceof Error ? err.message : String(err) }, 'bug: handling news failed');
      }
    }
  }

  /** Messages that need no answer: the addon answered them already, or there is none. */
  private news(n: Float64Array, o: number): void {
    const op = n[o + F.op] ?? 0;
    switch (op) {
      case Op.INTERRUPT:
        this.waiting.get(n[o + F.arg] ?? -1)?.interrupt();
        return;
      case Op.FORGET:
        this.fs.forget(n[o + F.ino] ?? 0, n[o + F.arg] ?? 0);
        return;
      case Op.RELEASE:
        this.fs.release(n[o + F.fh] ?? 0);
        return;
      case Op.RELEASEDIR:
        this.fs.releasedir(n[o + F.fh] ?? 0);
        return;
      case Op.FAST_DRAINED: {
        this.fastDrained?.();
        const waiters = this.fastStopWaiters;
        this.fastStopWaiters = [];
        for (const wake of waiters) wake();
        return;
      }
      case Op.END:
        this.markEnded();
        return;
      default:
        throw new Error(`unknown news ${op}`);
    }
  }

  private dispatch(id: number, n: Float64Array, o: number, extra: string | Buffer | undefined): void {
    const op = n[o + F.op] ?? 0;
    const ino = n[o + F.ino] ?? 0;
    const fhRaw = n[o + F.fh] ?? -1;
    const fh = fhRaw >= 0 ? fhRaw : null;
    const ctx = (): RequestContext => ({ uid: n[o + F.uid] ?? -1, gid: n[o + F.gid] ?? -1, pid: n[o + F.pid] ?? 0, known: true });
    const name = typeof extra === 'string' ? extra : '';
    const fs = this.fs;
    switch (op) {
      case Op.READ: {
        const req = new Request(ctx());
        this.waiting.set(id, req);
        // The read's buffer is daemon memory, made only when the view has its data.
        const into = (length: number): Buffer => {
          const buf = this.addon.readBuffer(this.s, id, length);
          if (buf === null) throw BlksnapError.of('EIO', 'the read was answered already');
          return buf;
        };
        this.settle(id, op, fs.read(fh ?? 0, into, n[o + F.size] ?? 0, n[o + F.off] ?? 0, req), (bytes) => {
          this.waiting.delete(id);
          return this.addon.replyRead(this.s, id, bytes);
        });
        return;
      }
      case Op.WRITE: {
        const buf = extra instanceof Buffer ? extra : Buffer.alloc(0);
        const req = new Request(ctx());
        this.settle(id, op, fs.write(fh ?? 0, buf, n[o + F.size] ?? 0, n[o + F.off] ?? 0, req), (bytes) => this.addon.replyWrite(this.s, id, bytes));
        return;
      }
      case Op.LOOKUP:
        this.replyEntry(id, fs.lookup(ino, name, ctx()));
        return;
      case Op.GETATTR: {
        const r = fs.getattr(ino, fh);
        this.addon.replyAttr(this.s, id, this.attrArray(r.attr), r.attrTimeout);
        return;
      }
      case Op.SETATTR: {
        const valid = n[o + F.arg] ?? 0;
        const r = fs.setattr(ino, fh, {
          ...((valid & SET_ATTR.SIZE) !== 0 ? { size: n[o + F.size] ?? 0 } : {}),
          ...((valid & (SET_ATTR.MODE | SET_ATTR.UID | SET_ATTR.GID)) !== 0 ? { owner: true } : {}),
          ...((valid & (SET_ATTR.ATIME | SET_ATTR.MTIME | SET_ATTR.ATIME_NOW | SET_ATTR.MTIME_NOW)) !== 0 ? { times: true } : {}),
        }, ctx());
        this.addon.replyAttr(this.s, id, this.attrArray(r.attr), r.attrTimeout);
        return;
      }
      case Op.OPEN: {
        const r = fs.open(ino, n[o + F.arg] ?? 0, ctx());
        const flags = (r.directIo ? OPEN_DIRECT_IO : 0) | (r.keepCache ? OPEN_KEEP_CACHE : 0) | (r.nonseekable ? OPEN_NONSEEKABLE : 0)
          | (r.parallelDirectWrites ? OPEN_PARALLEL_DIRECT_WRITES : 0);
        if (!this.addon.replyOpen(this.s, id, r.fh, flags)) fs.release(r.fh); // the caller is gone: nobody will close it
        return;
      }
      case Op.FLUSH:
        this.settle(id, op, fs.flush(fh ?? 0, new Request(ctx())), () => this.addon.replyErr(this.s, id, 0));
        return;
      case Op.LSEEK:
        this.settle(id, op, fs.lseek(fh ?? 0, n[o + F.off] ?? 0, n[o + F.arg] ?? 0), (offset) => this.addon.replyLseek(this.s, id, offset));
        return;
      case Op.FALLOCATE:
        this.settle(id, op, fs.fallocate(fh ?? 0, n[o + F.arg] ?? 0, n[o + F.off] ?? 0, n[o + F.size] ?? 0), () => this.addon.replyErr(this.s, id, 0));
        return;
      case Op.FSYNC:
        this.settle(id, op, fs.fsync(fh ?? 0, (n[o + F.arg] ?? 0) !== 0), () => this.addon.replyErr(this.s, id, 0));
        return;
      case Op.OPENDIR: {
        const dh = fs.opendir(ino, ctx());
        if (!this.addon.replyOpen(this.s, id, dh, 0)) fs.releasedir(dh);
        return;
      }
      case Op.READDIR: {
        const entries = fs.readdir(fh ?? 0);
        this.addon.replyDir(this.s, id, entries.map((e) => e.name), entries.map((e) => e.ino), entries.map((e) => e.mode), n[o + F.off] ?? 0);
        return;
      }
      case Op.MKDIR:
        this.settle(id, op, fs.mkdir(ino, name, ctx()), (entry) => this.replyEntry(id, entry));
        return;
      case Op.RMDIR:
        fs.rmdir(ino, name, ctx());
        this.addon.replyErr(this.s, id, 0);
        return;
      case Op.STATFS: {
        const s = fs.statfs();
        this.addon.replyStatfs(this.s, id, [s.bsize, s.frsize, s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.namemax]);
        return;
      }
      default: {
        const refused = REFUSED[op];
        if (refused !== undefined) fs.refuse(refused);
        throw BlksnapError.of('ENOSYS', `request kind ${op} is not supported`);
      }
    }
  }

  /** Answer `id` when `work` settles: `reply` with its value, or its errno. */
  private settle<T>(id: number, op: number, work: Promise<T>, reply: (value: T) => boolean): void {
    work.then(
      (value) => {
        let answered: boolean;
        try {
          answered = reply(value);
        } catch (err) {
          // Turning the value into a reply failed: the caller still gets an answer.
          this.fail(id, op, err);
          return;
        }
        if (!answered) this.log.error({ id, op }, 'bug: a request was answered twice');
      },
      (err: unknown) => this.fail(id, op, err),
    );
  }

  private fail(id: number, op: number, err: unknown): void {
    this.waiting.delete(id);
    const errno = -toNegativeErrno(err);
    if (!(err instanceof BlksnapError) || (err.code !== 'ENOENT' && err.code !== 'EINTR' && err.code !== 'ENXIO')) {
      this.log.debug({ op, err: err instanceof Error ? err.message : String(err), errno }, 'request failed');
    }
    if (this.native !== null && !this.addon.replyErr(this.native, id, errno)) {
      this.log.error({ id, op }, 'bug: a request was answered twice');
    }
  }

  private attrArray(a: Attr): Float64Array {
    const x = this.attrScratch;
    x[0] = a.ino; x[1] = a.mode; x[2] = a.nlink; x[3] = a.uid; x[4] = a.gid; x[5] = a.size;
    x[6] = a.blocks; x[7] = a.blksize; x[8] = a.atime.getTime(); x[9] = a.mtime.getTime(); x[10] = a.ctime.getTime();
    return x;
  }

  private replyEntry(id: number, e: Entry): boolean {
    const ok = this.addon.replyEntry(this.s, id, this.attrArray(e.attr), e.entryTimeout, e.attrTimeout);
    // Nobody received the entry (the caller is gone): the kernel will not forget it.
    if (!ok) this.fs.forget(e.attr.ino, 1);
    return ok;
  }

  // ---- life ---------------------------------------------------------------------

  unmount(): Promise<void> {
    const errno = this.addon.unmount(this.s, false);
    if (errno === 0) return Promise.resolve();
    if (errno === ENDED_BY_ABORT) {
      this.log.info({ mountpoint: this.mountpoint }, 'our mount is no longer the one at the mount point (umount -l, or covered): ended our own FUSE connection, unmounted nothing');
      return Promise.resolve();
    }
    if (errno === 16) return Promise.reject(BlksnapError.of('EBUSY', `${this.mountpoint} is busy (a loop device or open file uses it)`));
    if (errno === 22) return Promise.resolve(); // EINVAL: not mounted (any more)
    return Promise.reject(BlksnapError.of('EIO', `cannot unmount ${this.mountpoint}: errno ${errno}`));
  }

  async close(): Promise<void> {
    if (this.closed || this.native === null) return;
    this.closed = true;
    this.addon.close(this.native);
    this.markEnded();
  }

  stats(): TransportStats {
    const [requests, inFlight, maxInFlight, fastOn, reads, writes, readBytes, writeBytes, syncs] = this.native === null
      ? [0, 0, 0, 0, 0, 0, 0, 0, 0]
      : this.addon.stats(this.native, false);
    return {
      transport: 'libfuse3', requests, in_flight: inFlight, max_in_flight: maxInFlight, credentials: true,
      fast_path: { enabled: fastOn === 1, reads, writes, read_bytes: readBytes, write_bytes: writeBytes, syncs },
    };
  }

  // ---- the fast path ------------------------------------------------------------

  attachFastPath(spec: FastPathSpec): NativeFastPath {
    this.addon.fastAttach(
      this.s, spec.header, spec.marks, spec.cbt, spec.originFd, spec.originIno, spec.originSize,
      spec.chunkSize, spec.blockSize, spec.writable,
    );
    this.fastDrained = spec.onDrained;
    return {
      stop: () => this.stopFastPath(),
      writes: () => {
        const [begun, ended, pages] = this.addon.fastTally(this.s);
        return { begun, ended, pages };
      },
    };
  }

  /** Off, then wait for the native requests inside (each FAST_DRAINED: look again), then let the origin go. */
  private async stopFastPath(): Promise<void> {
    if (this.native === null || this.closed) return;
    while (this.addon.fastStop(this.s) > 0) {
      await new Promise<void>((resolve) => this.fastStopWaiters.push(resolve));
      if (this.closed) return;
    }
    const errno = this.addon.fastRelease(this.s);
    if (errno !== 0) throw BlksnapError.of('EBUSY', `the fast path still holds the origin (errno ${errno})`);
  }
}

export const libfuse3Transport: Transport = {
  name: 'libfuse3',
  mount(fs: FileSystem, config: MountConfig, log: Logger): Promise<FuseSession> {
    const addon = loadAddon();
    const session = new Libfuse3Session(addon, fs, log, config.mountpoint);
    try {
      session.start(libfuseArgs(config));
    } catch (err) {
      return Promise.reject(BlksnapError.of('EIO', `cannot mount on ${config.mountpoint}: ${err instanceof Error ? err.message : String(err)}`, err));
    }
    return Promise.resolve(session);
  },
};
