/*
 * blksnapfs-watchdog DEV MOUNTPOINT: started by the daemon at mount time (watchdog.c),
 * with the read end of a pipe on fd 3 and our FUSE connection's fusectl directory on
 * fd 4. A line on the pipe means the session ended as it should: exit. End of file
 * means the daemon died while its session was live: detach our mount if it is the top
 * one at MOUNTPOINT and abort our connection (own-mount.c), never anything else.
 * A program of its own (not a fork of the daemon): it must not look like a second
 * daemon, nor keep the daemon's memory or descriptors.
 */
#include "own-mount.h"
#include <errno.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc != 3) return 2;
  bs_own_mount m;
  if (bs_own_mount_adopt(&m, argv[2], argv[1], BS_WATCHDOG_CONN_FD) != 0) return 2;
  char c;
  ssize_t n;
  do n = read(BS_WATCHDOG_PIPE_FD, &c, 1);
  while (n < 0 && errno == EINTR);
  if (n > 0) return 0; /* stood down: the session is over, nothing is ours to clean up */
  bs_own_release(&m);
  bs_own_mount_close(&m);
  return 0;
}
