/**
 * The fault file system's own process: `node fault-fs-process.js BACKING_DIR MOUNTPOINT`,
 * started (with an IPC channel) and driven by test/helpers/fault-fs.ts; see there for
 * what it can inject. A separate process, so the daemon under test and the file
 * system under it never share an event loop (no deadlock however either blocks).
 *
 * A passthrough to BACKING_DIR on ext4: every file and directory there appears in the
 * mount. Synchronous fs calls keep it simple; the backing store is a real disk, never
 * a FUSE mount. Mounted with direct_io, so every read and write reaches us (the page
 * cache would otherwise hide faults) and O_DIRECT opens work; O_DIRECT itself is not
 * passed on to the backing file (our buffers are not aligned). flock is left to the
 * kernel (no flock operation), which handles it locally.
 *
 * IPC, one message per request, each answered `{ id, ok, fired, error? }`:
 *   { id, cmd: 'fail', rule: FaultRule }  add a rule
 *   { id, cmd: 'heal', file?: string }    remove all rules (or one file's)
 *   { id, cmd: 'fired' }                  how many requests were failed or delayed so far
 * `{ ready: true }` is sent once the mount is live. SIGTERM or a closed IPC channel
 * unmounts and exits; `auto_unmount` cleans up after a SIGKILL.
 */
import fs from 'node:fs';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import type { Cb, CbWith, FuseStat, FuseStatFs } from '../../src/fuse/fuse-native/binding.js';
import { fallocateAsync } from '../../src/storage/native.js';
import { errnoNumber, errnoNameOf } from '../../src/errors.js';
import { FaultRules, type FaultOp, type FaultRule } from './fault-rules.js';
import { createFaultFuse, type FaultFuseOps } from './fault-fuse-native.js';

export type FaultRequest =
  | { id: number; cmd: 'fail'; rule: FaultRule }
  | { id: number; cmd: 'heal'; file?: string }
  | { id: number; cmd: 'fired' };

export type FaultReply = { ready: true } | { id: number; ok: boolean; fired?: number; error?: string };

const errnos = osConstants.errno as Record<string, number | undefined>;

function negativeErrno(err: unknown): number {
  const code = (err as { code?: unknown } | null)?.code;
  return -((typeof code === 'string' ? errnos[code] : undefined) ?? osConstants.errno.EIO);
}

function toStat(st: fs.Stats): FuseStat {
  return {
    mode: st.mode, uid: st.uid, gid: st.gid, size: st.size, nlink: st.nlink,
    mtime: st.mtime, atime: st.atime, ctime: st.ctime, blksize: st.blksize, blocks: st.blocks,
  };
}

/** Run `work`; answer its value (or 0), or the negative errno it threw. */
function answer<T>(cb: CbWith<T>, work: () => T): void {
  let value: T;
  try {
    value = work();
  } catch (err) {
    cb(negativeErrno(err));
    return;
  }
  cb(0, value);
}

function passthroughOps(backing: string, rules: FaultRules): FaultFuseOps {
  const real = (path: string): string => join(backing, path);
  /**
   * Apply the rules to a request: answer the injected errno, or run `work` (which
   * answers), after the delay the rules ask for.
   */
  const guarded = (path: string, op: FaultOp, offset: number, length: number, cb: Cb, work: () => void): void => {
    const { errno, delayMs } = rules.check(path, op, offset, length);
    const go = (): void => {
      if (errno === null) work();
      else cb(-(errnos[errno] ?? osConstants.errno.EIO));
    };
    if (delayMs > 0) setTimeout(go, delayMs);
    else go();
  };
  const done = (cb: Cb, work: () => void): void => answer<undefined>((code) => cb(code), () => {
    work();
    return undefined;
  });
  /** Reads and writes answer a byte count. */
  const count = (cb: Cb, work: () => number): void => {
    try {
      cb(work());
    } catch (err) {
      cb(negativeErrno(err));
    }
  };

  return {
    init: (cb) => cb(0),
    getattr: (path, cb) => answer(cb, () => toStat(fs.lstatSync(real(path)))),
    fgetattr: (_path, fd, cb) => answer(cb, () => toStat(fs.fstatSync(fd))),
    readdir: (path, cb) => answer(cb, () => fs.readdirSync(real(path))),
    open: (path, flags, cb) => answer(cb, () => fs.openSync(real(path), flags & ~fs.constants.O_DIRECT)),
    create: (path, mode, cb) => answer(cb, () => fs.openSync(real(path), fs.constants.O_RDWR | fs.constants.O_CREAT, mode)),
    release: (_path, fd, cb) => done(cb, () => fs.closeSync(fd)),
    read: (path, fd, buf, len, pos, cb) =>
      guarded(path, 'read', pos, len, cb, () => count(cb, () => fs.readSync(fd, buf, 0, len, pos))),
    write: (path, fd, buf, len, pos, cb) =>
      guarded(path, 'write', pos, len, cb, () => count(cb, () => fs.writeSync(fd, buf, 0, len, pos))),
    fallocate: (path, fd, mode, offset, length, cb) =>
      guarded(path, 'fallocate', offset, length, cb, () => {
        if (mode !== 0) cb(-osConstants.errno.EOPNOTSUPP); // only plain preallocation is passed on
        else fallocateAsync(fd, offset, length).then(() => cb(0), (err: unknown) => cb(-errnoNumber(errnoNameOf(err))));
      }),
    truncate: (path, size, cb) => done(cb, () => fs.truncateSync(real(path), size)),
    ftruncate: (_path, fd, size, cb) => done(cb, () => fs.ftruncateSync(fd, size)),
    flush: (_path, _fd, cb) => cb(0),
    fsync: (_path, datasync, fd, cb) => done(cb, () => (datasync ? fs.fdatasyncSync(fd) : fs.fsyncSync(fd))),
    unlink: (path, cb) => done(cb, () => fs.unlinkSync(real(path))),
    rename: (src, dest, cb) => done(cb, () => fs.renameSync(real(src), real(dest))),
    mkdir: (path, mode, cb) => done(cb, () => fs.mkdirSync(real(path), { mode })),
    rmdir: (path, cb) => done(cb, () => fs.rmdirSync(real(path))),
    chmod: (path, mode, cb) => done(cb, () => fs.chmodSync(real(path), mode)),
    utimens: (path, atime, mtime, cb) => done(cb, () => fs.utimesSync(real(path), new Date(atime), new Date(mtime))),
    statfs: (path, cb) => answer(cb, (): FuseStatFs => {
      const st = fs.statfsSync(real(path));
      return { bsize: st.bsize, frsize: st.bsize, blocks: st.blocks, bfree: st.bfree, bavail: st.bavail, files: st.files, ffree: st.ffree, favail: st.ffree, namemax: 255 };
    }),
  };
}

async function main(): Promise<void> {
  const [backing, mountpoint] = process.argv.slice(2);
  if (backing === undefined || mountpoint === undefined || process.send === undefined) {
    throw new Error('usage: fault-fs-process.js BACKING_DIR MOUNTPOINT (started with an IPC channel)');
  }
  const send = (reply: FaultReply): void => {
    process.send?.(reply);
  };
  const rules = new FaultRules();
  const fuse = await createFaultFuse(mountpoint, passthroughOps(backing, rules), [
    'fsname=faultfs', 'subtype=faultfs', 'auto_unmount', 'direct_io', 'big_writes',
    'max_write=131072', 'max_read=131072', 'attr_timeout=0', 'entry_timeout=0', 'negative_timeout=0',
  ]);
  await new Promise<void>((resolve, reject) => fuse.mount((err) => (err === null ? resolve() : reject(err))));

  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    fuse.unmount(() => process.exit(0));
    setTimeout(() => process.exit(0), 3000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('disconnect', stop);
  process.on('message', (message: FaultRequest) => {
    try {
      if (message.cmd === 'fail') rules.add(message.rule);
      else if (message.cmd === 'heal') rules.heal(message.file);
      send({ id: message.id, ok: true, fired: rules.fired });
    } catch (err) {
      send({ id: message.id, ok: false, error: err instanceof Error ? err.message : String(err) });
    }
  });
  send({ ready: true });
}

main().catch((err: unknown) => {
  process.stderr.write(`fault-fs: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exit(1);
});
