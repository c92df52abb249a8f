/**
 * The kernel's notice of writes to a file, for telling the origin's writers apart
 * (daemon/outside-write-watch.ts decides what they mean). Two interfaces, both read
 * without blocking (the descriptors are O_NONBLOCK; a drain is a few read(2) calls that
 * return EAGAIN once empty), through koffi:
 *
 * - fanotify (FAN_MODIFY on one inode): each event names the process (thread group)
 *   that wrote. Regular files only: the kernel reports no fanotify event for a device
 *   node (measured on 6.18: writes to /dev/loopN through its node gave none). Needs
 *   CAP_SYS_ADMIN. Writes that reach a file without write(2)-like calls give no event:
 *   stores into a shared mapping, a loop device attached to the file (with or without
 *   direct I/O; measured), another host writing the file's storage. Events of one writer
 *   are merged while unread, so the queue stays short; an overflowed queue (events lost)
 *   is reported as such.
 * - inotify (IN_MODIFY on one inode): works on a block device's node too, but names no
 *   writer: only "someone wrote through this node".
 *
 * Both are marked through `/proc/self/fd/N` of a descriptor the caller holds, so the
 * mark lands on exactly the inode held open, whatever its path names by now.
 */
import koffi from 'koffi';
import { BlksnapError, errnoNameOfNumber } from '../errors.js';

const libc = koffi.load('libc.so.6');
const fanotifyInit = libc.func('int fanotify_init(unsigned int flags, unsigned int event_f_flags)');
const fanotifyMark = libc.func('int fanotify_mark(int fd, unsigned int flags, uint64_t mask, int dirfd, const char *path)');
const inotifyInit1 = libc.func('int inotify_init1(int flags)');
const inotifyAddWatch = libc.func('int inotify_add_watch(int fd, const char *path, uint32_t mask)');
const readFn = libc.func('long read(int fd, void *buf, size_t count)');
const closeFn = libc.func('int close(int fd)');

const FAN_CLOEXEC = 0x1;
const FAN_NONBLOCK = 0x2;
const FAN_CLASS_NOTIF = 0x0;
const FAN_MARK_ADD = 0x1;
const FAN_MODIFY = 0x2;
const FAN_Q_OVERFLOW = 0x4000;
const O_RDONLY = 0;
const O_LARGEFILE = 0o100000;
const O_CLOEXEC = 0o2000000;
const O_NONBLOCK = 0o4000;
const AT_FDCWD = -100;
const IN_MODIFY = 0x2;
const IN_Q_OVERFLOW = 0x4000;
const IN_IGNORED = 0x8000;
const EAGAIN = 11;
/** struct fanotify_event_metadata: event_len u32, vers u8, reserved u8, metadata_len u16, mask u64, fd s32, pid s32. */
const FAN_METADATA_BYTES = 24;
/** struct inotify_event: wd s32, mask u32, cookie u32, len u32, then len bytes of name. */
const IN_EVENT_BYTES = 16;

function failed(what: string): BlksnapError {
  const code = errnoNameOfNumber(koffi.errno());
  return BlksnapError.of(code, `${what}: ${code}`);
}

/** What one drain found. */
export interface ModifyNotices {
  /** Writers named by fanotify (thread-group ids), each once; inotify names none. */
  pids: number[];
  /** inotify: how many modify events came (from anyone, us included). */
  anonymous: number;
  /** The queue overflowed: events were lost, so nothing can be told about that time. */
  lost: boolean;
  /** The watched inode is gone from the watch (inotify IN_IGNORED): nothing more will be seen. */
  ended: boolean;
}

/** Read every queued event of a non-blocking notification descriptor. */
function drainBytes(fd: number, onChunk: (buf: Buffer, length: number) => void): void {
  const buf = Buffer.alloc(16 * 1024);
  for (;;) {
    const n = Number(readFn(fd, buf, buf.length));
    if (n > 0) {
      onChunk(buf, n);
      continue;
    }
    if (n < 0 && koffi.errno() !== EAGAIN) throw failed('read of a notification descriptor');
    return;
  }
}

export class ModifyWatch {
  private closed = false;

  private constructor(private readonly fd: number, readonly kind: 'fanotify' | 'inotify') {}

  /**
   * fanotify on the inode of the descriptor `heldFd` (this process's). Throws (with the
   * errno: EPERM without CAP_SYS_ADMIN) when the kernel will not give one.
   */
  static fanotify(heldFd: number): ModifyWatch {
    const fd = fanotifyInit(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK, O_RDONLY | O_LARGEFILE | O_CLOEXEC);
    if (fd < 0) throw failed('fanotify_init');
    if (fanotifyMark(fd, FAN_MARK_ADD, FAN_MODIFY, AT_FDCWD, `/proc/self/fd/${heldFd}`) !== 0) {
      const err = failed('fanotify_mark');
      closeFn(fd);
      throw err;
    }
    return new ModifyWatch(fd, 'fanotify');
  }

  /** inotify on the inode of the descriptor `heldFd` (a device node too). */
  static inotify(heldFd: number): ModifyWatch {
    const fd = inotifyInit1(O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) throw failed('inotify_init1');
    if (inotifyAddWatch(fd, `/proc/self/fd/${heldFd}`, IN_MODIFY) < 0) {
      const err = failed('inotify_add_watch');
      closeFn(fd);
      throw err;
    }
    return new ModifyWatch(fd, 'inotify');
  }

  /** Everything queued since the last drain (never blocks). */
  drain(): ModifyNotices {
    const out: ModifyNotices = { pids: [], anonymous: 0, lost: false, ended: false };
    if (this.closed) return out;
    const pids = new Set<number>();
    drainBytes(this.fd, (buf, n) => {
      let at = 0;
      if (this.kind === 'fanotify') {
        while (at + FAN_METADATA_BYTES <= n) {
          const length = buf.readUInt32LE(at);
          const mask = Number(buf.readBigUInt64LE(at + 8) & 0xffffffffn);
          const eventFd = buf.readInt32LE(at + 16);
          const pid = buf.readInt32LE(at + 20);
          // Each event came with a descriptor of the file opened for us: ours to close.
          if (eventFd >= 0) closeFn(eventFd);
          if ((mask & FAN_Q_OVERFLOW) !== 0) out.lost = true;
          else if ((mask & FAN_MODIFY) !== 0) pids.add(pid);
          if (length < FAN_METADATA_BYTES) break;
          at += length;
        }
      } else {
        while (at + IN_EVENT_BYTES <= n) {
          const mask = buf.readUInt32LE(at + 4);
          const nameLength = buf.readUInt32LE(at + 12);
          if ((mask & IN_Q_OVERFLOW) !== 0) out.lost = true;
          if ((mask & IN_IGNORED) !== 0) out.ended = true;
          if ((mask & IN_MODIFY) !== 0) out.anonymous++;
          at += IN_EVENT_BYTES + nameLength;
        }
      }
    });
    out.pids = [...pids];
    return out;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    closeFn(this.fd);
  }
}
