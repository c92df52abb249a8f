/**
 * The compatibility transport: fuse-native (libfuse 2's high-level, path-based API)
 * behind the same seam. Each path is walked to a node id with lookups that are
 * forgotten again when the request is answered; reads and writes go by handle (the
 * patched binding passes "" for a node whose name is gone).
 *
 * Its limits, which the libfuse3 transport does not have: one request at a time and
 * at most 128 KiB each; no caller (uid/gid/pid), so root-only commands are refused
 * unless the mount belongs to root; no interrupts, so an /events read that waits is
 * answered EINTR after a second to let a killed reader go; and the end of the session
 * is noticed by polling /proc/self/mountinfo.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { BlksnapError } from '../../errors.js';
import type { Logger } from '../../engine/logger.js';
import { toNegativeErrno } from '../../views/errno.js';
import { ANONYMOUS, type RequestContext } from '../../views/file-view.js';
import type { Attr, FileSystem, NodeId, RefusedOp } from '../../views/filesystem.js';
import { ROOT_ID } from '../../views/nodes.js';
import { isMounted } from '../mountinfo.js';
import { escapeOptionValue, type FuseSession, type MountConfig, type Transport, type TransportStats } from '../transport.js';
import { createFuse, type Cb, type CbWith, type FuseOps, type FuseStat } from './binding.js';

const execFileP = promisify(execFile);
const NOBODY: RequestContext = ANONYMOUS.ctx;
const POLL_MS = 300;

export function fuseNativeOptions(config: MountConfig): string[] {
  const opts = [
    `fsname=${escapeOptionValue(config.fsname)}`,
    'subtype=blksnapfs',
    'auto_unmount',
    // fuse-native has no per-open flags: direct I/O for every file (see MountTree.open).
    'direct_io',
    'big_writes',
    'max_write=131072',
    'max_read=131072',
    'entry_timeout=0',
    'negative_timeout=0',
    'attr_timeout=1',
    'default_permissions',
  ];
  if (config.allowOther) opts.push('allow_other');
  return opts;
}

function toStat(a: Attr): FuseStat {
  return { mode: a.mode, uid: a.uid, gid: a.gid, size: a.size, nlink: a.nlink, mtime: a.mtime, atime: a.atime, ctime: a.ctime, blksize: a.blksize, blocks: a.blocks };
}

class PathWalker {
  constructor(private readonly fs: FileSystem) {}

  /** Run `work` on the node at `path`; the lookups made to find it are forgotten after. */
  async at<T>(path: string, work: (ino: NodeId) => T | Promise<T>): Promise<T> {
    const taken: NodeId[] = [];
    try {
      let ino = ROOT_ID;
      for (const name of path.split('/').filter((p) => p.length > 0)) {
        ino = this.fs.lookup(ino, name, NOBODY).attr.ino;
        taken.push(ino);
      }
      if (!path.startsWith('/')) throw BlksnapError.of('ENOENT', 'that file has no name any more');
      return await work(ino);
    } finally {
      for (const ino of taken) this.fs.forget(ino, 1);
    }
  }

  /** The parent of `path` and the last name in it. */
  async parent<T>(path: string, work: (parent: NodeId, name: string) => T | Promise<T>): Promise<T> {
    const slash = path.lastIndexOf('/');
    return this.at(path.slice(0, slash) || '/', (parent) => work(parent, path.slice(slash + 1)));
  }
}

function createOps(fs: FileSystem, log: Logger, counters: { requests: number; inFlight: number; max: number }): FuseOps {
  const walk = new PathWalker(fs);

  function answer<T>(op: string, cb: CbWith<T>, work: () => T | Promise<T>): void {
    counters.requests++;
    counters.max = Math.max(counters.max, ++counters.inFlight);
    const onError = (err: unknown): void => {
      counters.inFlight--;
      const code = toNegativeErrno(err);
      if (!(err instanceof BlksnapError) || (err.code !== 'ENOENT' && err.code !== 'EINTR')) {
        log.debug({ op, err: err instanceof Error ? err.message : String(err), code }, 'request failed');
      }
      cb(code);
    };
    try {
      Promise.resolve(work()).then((value) => {
        counters.inFlight--;
        cb(0, value);
      }, onError);
    } catch (err) {
      onError(err);
    }
  }

  /** Reads and writes answer with a byte count in place of 0. */
  const count = (op: string, cb: Cb, work: () => Promise<number>): void => answer<number>(op, (code, n) => cb(code < 0 ? code : (n ?? 0)), work);

  const refuse = (op: RefusedOp) => (...args: unknown[]): void => {
    const cb = args[args.length - 1] as Cb;
    answer(op, cb, () => fs.refuse(op));
  };

  return {
    init: (cb) => cb(0),
    getattr: (path, cb) => answer('getattr', cb, () => walk.at(path, (ino) => toStat(fs.getattr(ino, null).attr))),
    fgetattr: (path, fd, cb) => answer('fgetattr', cb, () => toStat(fs.getattr(0, fd).attr)),
    readdir: (path, cb) => answer('readdir', cb, () => walk.at(path, (ino) => {
      const dh = fs.opendir(ino, NOBODY);
      try {
        return fs.readdir(dh).map((e) => e.name);
      } finally {
        fs.releasedir(dh);
      }
    })),
    open: (path, flags, cb) => answer('open', cb, () => walk.at(path, (ino) => fs.open(ino, flags, NOBODY).fh)),
    release: (_path, fd, cb) => answer('release', cb, () => fs.release(fd)),
    read: (_path, fd, buf, len, pos, cb) => count('read', cb, () => fs.read(fd, () => buf, len, pos, ANONYMOUS)),
    write: (_path, fd, buf, len, pos, cb) => count('write', cb, () => fs.write(fd, buf, len, pos, ANONYMOUS)),
    truncate: (path, size, cb) => answer('truncate', cb, () => walk.at(path, (ino) => { fs.setattr(ino, null, { size }, NOBODY); })),
    ftruncate: (_path, fd, size, cb) => answer('ftruncate', cb, () => { fs.setattr(0, fd, { size }, NOBODY); }),
    flush: (_path, fd, cb) => answer('flush', cb, () => fs.flush(fd, ANONYMOUS)),
    fsync: (_path, datasync, fd, cb) => answer('fsync', cb, () => fs.fsync(fd, datasync)),
    mkdir: (path, _mode, cb) => answer('mkdir', cb, () => walk.parent(path, async (parent, name) => {
      const e = await fs.mkdir(parent, name, NOBODY);
      fs.forget(e.attr.ino, 1);
    })),
    rmdir: (path, cb) => answer('rmdir', cb, () => walk.parent(path, (parent, name) => fs.rmdir(parent, name, NOBODY))),
    unlink: refuse('unlink'),
    rename: refuse('rename'),
    create: refuse('create'),
    mknod: refuse('mknod'),
    link: refuse('link'),
    symlink: refuse('symlink'),
    chmod: (path, _mode, cb) => answer('chmod', cb, () => walk.at(path, (ino) => { fs.setattr(ino, null, { owner: true }, NOBODY); })),
    chown: (path, _uid, _gid, cb) => answer('chown', cb, () => walk.at(path, (ino) => { fs.setattr(ino, null, { owner: true }, NOBODY); })),
    utimens: (_path, _atime, _mtime, cb) => cb(0), // `touch` succeeds; times are not stored
    statfs: (_path, cb) => answer('statfs', cb, () => {
      const s = fs.statfs();
      return { bsize: s.bsize, frsize: s.frsize, blocks: s.blocks, bfree: s.bfree, bavail: s.bavail, files: s.files, ffree: s.ffree, favail: s.ffree, namemax: s.namemax };
    }),
  };
}

class FuseNativeSession implements FuseSession {
  readonly transport = 'fuse-native' as const;
  readonly ended: Promise<void>;
  private polling = true;

  constructor(private readonly mountpoint: string, private readonly counters: { requests: number; inFlight: number; max: number }) {
    this.ended = this.poll();
  }

  private async poll(): Promise<void> {
    while (this.polling) {
      await new Promise((r) => setTimeout(r, POLL_MS));
      if (!(await isMounted(this.mountpoint))) return;
    }
  }

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

  /**
   * Stop watching. fuse-native's own unmount is not called: it is a lazy
   * `fusermount -uz` of the path, which by now may be a new mount of someone else's.
   */
  close(): Promise<void> {
    this.polling = false;
    return Promise.resolve();
  }

  stats(): TransportStats {
    return {
      transport: 'fuse-native', requests: this.counters.requests, in_flight: this.counters.inFlight, max_in_flight: this.counters.max, credentials: false,
      fast_path: { enabled: false, reads: 0, writes: 0, read_bytes: 0, write_bytes: 0, syncs: 0 },
    };
  }
}

export const fuseNativeTransport: Transport = {
  name: 'fuse-native',
  mount(fs: FileSystem, config: MountConfig, log: Logger): Promise<FuseSession> {
    const counters = { requests: 0, inFlight: 0, max: 0 };
    const fuse = createFuse(config.mountpoint, createOps(fs, log, counters), fuseNativeOptions(config));
    return new Promise((resolve, reject) => {
      try {
        fuse.mount((err) => {
          if (err) reject(BlksnapError.of('EIO', `cannot mount on ${config.mountpoint}: ${err.message}`, err));
          else resolve(new FuseNativeSession(config.mountpoint, counters));
        });
      } catch (err) {
        reject(BlksnapError.of('EIO', `cannot mount on ${config.mountpoint}: ${err instanceof Error ? err.message : String(err)}`, err));
      }
    });
  },
};
