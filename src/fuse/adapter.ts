/**
 * From fuse-native callbacks to the views: translate arguments, run the view, reply
 * with a value or a negative errno. No snapshot logic here. Every async view call is
 * awaited inside `reply`, so no request can be left unanswered (which would hang the
 * caller's system call).
 */
import type { Tree } from '../views/tree.js';
import type { HandleTable } from '../views/handles.js';
import { toNegativeErrno } from '../views/errno.js';
import type { Logger } from '../engine/logger.js';
import type { Cb, CbWith, FuseOps } from './fuse-native-binding.js';
import { BlksnapError } from '../errors.js';
import { ANONYMOUS } from '../views/file-view.js';

export interface AdapterParts {
  tree: Tree;
  handles: HandleTable;
  log: Logger;
  onInit?: () => void;
}

export function createFuseOps({ tree, handles, log, onInit }: AdapterParts): FuseOps {
  /** Run `work` and answer: 0 or its value on success, the errno on failure. */
  function answer<T>(op: string, cb: CbWith<T>, work: () => T | Promise<T>): void {
    const onError = (err: unknown): void => {
      const code = toNegativeErrno(err);
      // Expected refusals (ENOENT on lookups, EINTR on event waits) are not worth a warning.
      if (!(err instanceof BlksnapError) || (err.code !== 'ENOENT' && err.code !== 'EINTR')) {
        log.debug({ op, err: err instanceof Error ? err.message : String(err), code }, 'request failed');
      }
      cb(code);
    };
    try {
      const result = work();
      if (result instanceof Promise) result.then((value) => cb(0, value), onError);
      else cb(0, result);
    } catch (err) {
      onError(err);
    }
  }

  /** Reads and writes reply with a byte count instead of 0. */
  function count(op: string, cb: Cb, work: () => Promise<number>): void {
    work().then(
      (n) => cb(n),
      (err: unknown) => {
        // An /events read that waited for nothing answers EINTR every second: not news.
        if (!(err instanceof BlksnapError) || err.code !== 'EINTR') {
          log.debug({ op, err: err instanceof Error ? err.message : String(err) }, 'request failed');
        }
        cb(toNegativeErrno(err));
      },
    );
  }

  const refuse = (why: string) => (...args: unknown[]): void => {
    const cb = args[args.length - 1] as Cb;
    cb(toNegativeErrno(BlksnapError.of('EPERM', why)));
  };

  return {
    init: (cb) => {
      onInit?.();
      cb(0);
    },
    getattr: (path, cb) => answer('getattr', cb, () => tree.getattr(path)),
    fgetattr: (path, _fd, cb) => answer('fgetattr', cb, () => tree.getattr(path)),
    readdir: (path, cb) => answer('readdir', cb, () => ['.', '..', ...tree.readdir(path)]),
    open: (path, flags, cb) => answer('open', cb, () => handles.add(tree.open(path, flags))),
    release: (_path, fd, cb) => answer('release', cb, () => handles.remove(fd)),
    read: (_path, fd, buf, len, pos, cb) => count('read', cb, () => handles.get(fd).read(buf, len, pos, ANONYMOUS)),
    write: (_path, fd, buf, len, pos, cb) => count('write', cb, () => handles.get(fd).write(buf, len, pos, ANONYMOUS)),
    truncate: (path, size, cb) => answer('truncate', cb, () => tree.truncate(path, size)),
    ftruncate: (path, _fd, size, cb) => answer('ftruncate', cb, () => tree.truncate(path, size)),
    flush: (_path, _fd, cb) => cb(0),
    fsync: (_path, _datasync, fd, cb) => answer('fsync', cb, () => handles.get(fd).fsync()),
    mkdir: (path, _mode, cb) => answer('mkdir', cb, () => tree.mkdir(path)),
    rmdir: (path, cb) => answer('rmdir', cb, () => tree.rmdir(path)),
    unlink: refuse('files cannot be removed here; rmdir snapshots/NAME destroys a snapshot'),
    rename: refuse('nothing can be renamed here'),
    create: refuse('files cannot be created here; mkdir snapshots/NAME takes a snapshot'),
    mknod: refuse('files cannot be created here'),
    link: refuse('links cannot be made here'),
    symlink: refuse('links cannot be made here'),
    chmod: refuse('modes are fixed'),
    chown: refuse('owners are fixed'),
    utimens: (_path, _atime, _mtime, cb) => cb(0), // `touch` succeeds; times are not stored
    statfs: (_path, cb) => answer('statfs', cb, () => tree.statfs()),
  };
}
