/*
 * Our own mount, and only ours (own-mount.h states the rule). Facts this relies on,
 * checked on Linux 6.18 (the tests in test/own-mount.test.ts reproduce the cases):
 *   - A FUSE superblock's device number is freed at its destruction, and the next
 *     mount anywhere usually gets it (a tmpfs mounted at the same path after `umount`
 *     showed the same 0:N and even the same mount id).
 *   - fusectl has one directory per connection, named by the device number. The kernel
 *     removes it (fuse_conn_destroy -> fuse_ctl_remove_conn, under fuse_mutex) before
 *     the superblock frees the number (kill_anon_super). A descriptor on the directory
 *     keeps naming OUR directory: after our connection is gone, opening `waiting` in it
 *     fails with ENOENT, even once a new connection with the same number has its own
 *     directory of that name.
 *   - `waiting` is opened nonseekable: pread fails with ESPIPE, and a second read of
 *     one open file returns 0 bytes whatever the connection's state, so liveness is a
 *     fresh open + read each time (bytes: alive; ENOENT or 0 bytes: gone). A write to
 *     `abort` "succeeds" even when the connection is gone: it says nothing.
 *   - fusectl need not be mounted at /sys/fs/fuse/connections (it is not on this
 *     machine): a private mount made with fsopen/fsmount and never attached anywhere
 *     reaches the same single superblock and changes nothing anyone else can see; our
 *     open directory keeps it alive, and it vanishes with our last descriptor.
 *   - statx with AT_STATX_DONT_SYNC and an empty mask gives a FUSE mount's st_dev
 *     without a request (it answered at once with the daemon stopped).
 *   - An O_PATH descriptor on the top mount at a path pins that mount; umount2 of
 *     /proc/self/fd/N with MNT_DETACH detaches exactly it (a mount under it stays), but
 *     a plain umount2 through it is always EBUSY (the descriptor itself is a user).
 */
#include "own-mount.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#define FUSECTL_SUPER_MAGIC 0x65735543
#define FUSECTL_DIR "/sys/fs/fuse/connections"

void bs_own_mount_init(bs_own_mount *m) {
  m->path = NULL;
  m->dev_major = m->dev_minor = 0;
  m->conn_dir = -1;
}

void bs_own_mount_close(bs_own_mount *m) {
  if (m->conn_dir >= 0) close(m->conn_dir);
  m->conn_dir = -1;
  free(m->path);
  m->path = NULL;
}

/* fusectl names a connection by the kernel's dev_t: major << 20 | minor. */
static void conn_name(const bs_own_mount *m, char *out, size_t outlen) {
  snprintf(out, outlen, "%u", (m->dev_major << 20) | m->dev_minor);
}

/* A fusectl mount of our own, attached nowhere: its root's descriptor, or -1 (errno). */
static int private_fusectl(void) {
  int fs = fsopen("fusectl", FSOPEN_CLOEXEC);
  if (fs < 0) return -1;
  int root = -1;
  if (fsconfig(fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) == 0) {
    root = fsmount(fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
  }
  int e = errno;
  close(fs);
  errno = e;
  return root;
}

/* Our connection's fusectl directory: through a private mount (nothing to undo, and an
 * unmount of /sys/fs/fuse/connections by anyone cannot take it away), else through the
 * usual mount point if fusectl is mounted there. */
static int open_conn_dir(const bs_own_mount *m, char *err, size_t errlen) {
  char name[16];
  conn_name(m, name, sizeof(name));
  int root = private_fusectl();
  int why = errno;
  if (root >= 0) {
    int dir = openat(root, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int e = errno;
    close(root);
    if (dir >= 0) return dir;
    snprintf(err, errlen, "no FUSE connection %s in fusectl: %s", name, strerror(e));
    return -1;
  }
  struct statfs sf;
  if (statfs(FUSECTL_DIR, &sf) == 0 && sf.f_type == FUSECTL_SUPER_MAGIC) {
    int top = open(FUSECTL_DIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (top >= 0) {
      int dir = openat(top, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      int e = errno;
      close(top);
      if (dir >= 0) return dir;
      snprintf(err, errlen, "no FUSE connection %s in " FUSECTL_DIR ": %s", name, strerror(e));
      return -1;
    }
  }
  snprintf(err, errlen, "cannot mount fusectl (the FUSE control file system): %s", strerror(why));
  return -1;
}

int bs_own_mount_open(bs_own_mount *m, const char *path, char *err, size_t errlen) {
  bs_own_mount_init(m);
  m->path = strdup(path);
  if (m->path == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  /* Right after our mount(2), the top mount at the path is ours. An empty mask and
   * DONT_SYNC: st_dev without a request to us (our reader threads are not started). */
  struct statx sx;
  if (statx(AT_FDCWD, path, AT_STATX_DONT_SYNC | AT_NO_AUTOMOUNT | AT_SYMLINK_NOFOLLOW, 0, &sx) != 0) {
    snprintf(err, errlen, "cannot stat the new mount at %s: %s", path, strerror(errno));
    bs_own_mount_close(m);
    return -1;
  }
  int not_root = (sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) != 0 && (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT) == 0;
  if (not_root || sx.stx_dev_major != 0) {
    /* A FUSE mount's device is anonymous (major 0) and its root is a mount root. */
    snprintf(err, errlen, "%s is not our new FUSE mount (device %u:%u)", path, sx.stx_dev_major, sx.stx_dev_minor);
    bs_own_mount_close(m);
    return -1;
  }
  m->dev_major = sx.stx_dev_major;
  m->dev_minor = sx.stx_dev_minor;
  char why[192] = "";
  m->conn_dir = open_conn_dir(m, why, sizeof(why));
  if (m->conn_dir < 0) {
    snprintf(err, errlen, "cannot open the control directory of our FUSE connection (needed to tell our mount from any other): %s", why);
    bs_own_mount_close(m);
    return -1;
  }
  return 0;
}

int bs_own_mount_adopt(bs_own_mount *m, const char *path, const char *dev, int conn_dir) {
  bs_own_mount_init(m);
  if (sscanf(dev, "%u:%u", &m->dev_major, &m->dev_minor) != 2) return -1;
  m->path = strdup(path);
  if (m->path == NULL) return -1;
  m->conn_dir = conn_dir;
  return 0;
}

/* 1 alive, 0 gone, -1 cannot tell (errno). A fresh open each time: see the top. */
static int connection_state(const bs_own_mount *m) {
  if (m->conn_dir < 0) {
    errno = EBADF;
    return -1;
  }
  int fd = openat(m->conn_dir, "waiting", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? 0 : -1;
  char buf[32];
  ssize_t n;
  do n = read(fd, buf, sizeof(buf));
  while (n < 0 && errno == EINTR);
  int e = errno;
  close(fd);
  errno = e;
  return n > 0 ? 1 : n == 0 ? 0 : -1;
}

int bs_own_connection_alive(const bs_own_mount *m) {
  return connection_state(m) == 1;
}

void bs_own_abort(const bs_own_mount *m) {
  if (m->conn_dir < 0) return;
  int fd = openat(m->conn_dir, "abort", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return; /* ENOENT: our connection is gone already */
  ssize_t n;
  do n = write(fd, "1", 1);
  while (n < 0 && errno == EINTR);
  close(fd);
}

int bs_own_top_mount(const bs_own_mount *m) {
  /* The descriptor pins the top mount, so its device number cannot change hands
   * between the checks below and whatever the caller does with it. */
  int fd = open(m->path, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return -1;
  struct statx sx;
  int ours = statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, 0, &sx) == 0 &&
             sx.stx_dev_major == m->dev_major && sx.stx_dev_minor == m->dev_minor &&
             ((sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) == 0 || (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT) != 0);
  /* Checked after the pin: alive now means our superblock still holds the number, and
   * no two live superblocks share one, so the pinned mount is of ours. */
  if (ours && connection_state(m) == 1) return fd;
  close(fd);
  return -1;
}

/* umount2 of exactly the mount `fd` is on (a path through /proc names that mount). */
static int detach_fd(int fd) {
  char proc[64];
  snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
  return umount2(proc, MNT_DETACH) == 0 ? 0 : errno;
}

int bs_own_unmount(const bs_own_mount *m, int lazy) {
  int state = connection_state(m);
  if (state == 0) return 0; /* our superblock is gone: nothing of ours is mounted */
  if (state < 0) return errno;
  int fd = bs_own_top_mount(m);
  if (fd < 0) {
    /* Our mount is not at the path any more (umount -l, or covered by a later
     * mount): end our own session through our connection, touch no mount. */
    bs_own_abort(m);
    return BS_OWN_ABORTED;
  }
  if (lazy) {
    int r = detach_fd(fd);
    close(fd);
    return r;
  }
  /* A plain umount must not hold the pin (it would be busy because of it): by path,
   * right after the check. Only a mount replaced within these two system calls, by
   * someone who unmounted ours meanwhile, could be hit. */
  close(fd);
  return umount2(m->path, UMOUNT_NOFOLLOW) == 0 ? 0 : errno;
}

void bs_own_release(const bs_own_mount *m) {
  /* Unmount only when our connection is known alive (or cannot tell: then no mount). */
  if (connection_state(m) == 1) {
    int fd = bs_own_top_mount(m);
    if (fd >= 0) {
      detach_fd(fd);
      close(fd);
    }
  }
  /* Whatever holds our connection still (files open in a detached mount, a mount
   * stacked over ours): its requests fail now instead of waiting for nobody. This
   * reaches our connection only, and nothing once it is gone. */
  bs_own_abort(m);
}
