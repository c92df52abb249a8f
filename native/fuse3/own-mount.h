/*
 * Our own mount, and only ours: how the daemon (and its watchdog, after a crash) tells
 * its FUSE mount from another file system mounted at or over the same path later, even
 * one that got the same device number (the kernel hands the lowest free one to the next
 * mount). Shared by the addon and the watchdog executable: no libfuse, no N-API here.
 *
 * The identification rule (own-mount.c says why each step holds):
 *   1. At mount time: our superblock's device number D (statx of the fresh mount point,
 *      no request to any daemon), and a directory descriptor on OUR connection's fusectl
 *      directory (connections/D), opened through a private, detached fusectl mount.
 *   2. Our connection is alive while opening `waiting` in that directory and reading it
 *      returns bytes. The kernel removes the directory before it frees D, and our
 *      descriptor stays on our directory (a later connection with the number D gets a
 *      new one), so while it is alive, D is ours.
 *   3. The top mount at the path is ours when, with an O_PATH descriptor held on it
 *      (which pins it and its superblock), it is a mount root with device D, and our
 *      connection is alive after that descriptor was taken.
 * Only a top mount that is ours is ever unmounted; a mount stacked over ours is left
 * alone (then only our connection is aborted).
 */
#ifndef BLKSNAPFS_OWN_MOUNT_H
#define BLKSNAPFS_OWN_MOUNT_H

#include <stddef.h>

typedef struct bs_own_mount {
  char *path;           /* the mount point as mounted (absolute, no symlinks); owned */
  unsigned dev_major;   /* our superblock's device number */
  unsigned dev_minor;
  int conn_dir;         /* our connection's fusectl directory (O_DIRECTORY), -1 if none */
} bs_own_mount;

/* The fd numbers and argv the watchdog executable gets (watchdog.c, watchdog-main.c). */
#define BS_WATCHDOG_PIPE_FD 3     /* read end: a line = stand down; end of file = we died */
#define BS_WATCHDOG_CONN_FD 4     /* our connection's fusectl directory */
#define BS_WATCHDOG_NAME "blksnapfs-watchdog"

void bs_own_mount_init(bs_own_mount *m);
/* Right after the mount: learn D and open our connection's fusectl directory. -1 with a
 * message in `err` if that cannot be done (the mount must then fail: without it neither
 * the watchdog nor an unmount could tell our mount from another). */
int bs_own_mount_open(bs_own_mount *m, const char *path, char *err, size_t errlen);
/* For the watchdog: the same identity from what the daemon handed down. */
int bs_own_mount_adopt(bs_own_mount *m, const char *path, const char *dev, int conn_dir);
void bs_own_mount_close(bs_own_mount *m);

/* 1 while our FUSE connection exists (our superblock lives, mounted or not), else 0. */
int bs_own_connection_alive(const bs_own_mount *m);
/* Abort our connection (its pending and future requests fail); nothing if it is gone. */
void bs_own_abort(const bs_own_mount *m);
/* An O_PATH descriptor on the top mount at the path if that mount is ours, else -1. */
int bs_own_top_mount(const bs_own_mount *m);

/* End our own session (SIGTERM): if the top mount at the path is ours, umount(2) it
 * (EBUSY while in use; with `lazy`, detach it); if our mount is no longer there
 * (detached by umount -l, or covered by a later mount), abort our connection instead
 * and return BS_OWN_ABORTED. Never touches another mount. 0, BS_OWN_ABORTED or an errno. */
#define BS_OWN_ABORTED (-1)
int bs_own_unmount(const bs_own_mount *m, int lazy);
/* Clean up after a session that cannot be served any more (the daemon died, or a
 * start-up failed): detach our mount if it is the top one at the path, then abort our
 * connection if it still exists. Never touches another mount. */
void bs_own_release(const bs_own_mount *m);

#endif
