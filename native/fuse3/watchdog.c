/*
 * If the daemon dies (kill -9, a crash), its mount must not stay behind as "Transport
 * endpoint is not connected". libfuse 3 does this with fusermount3's auto_unmount,
 * which this machine does not have (Debian's fuse3 package would remove libfuse 2's
 * fusermount). So: a watchdog process started at mount time waits on a pipe. A clean
 * close writes a line (nothing to do); end of file means the daemon died, and the
 * watchdog lazily unmounts the mount point, but only if the mount there is still ours
 * (same device number), never a newer mount on the same path.
 */
#include "session.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* mountinfo escapes space, tab, newline and backslash as \ooo. */
static void escape_path(const char *in, char *out, size_t outlen) {
  size_t o = 0;
  for (; *in != '\0' && o + 5 < outlen; in++) {
    unsigned char c = (unsigned char)*in;
    if (c == ' ' || c == '\t' || c == '\n' || c == '\\') {
      out[o++] = '\\';
      out[o++] = (char)('0' + ((c >> 6) & 7));
      out[o++] = (char)('0' + ((c >> 3) & 7));
      out[o++] = (char)('0' + (c & 7));
    } else {
      out[o++] = (char)c;
    }
  }
  out[o] = '\0';
}

/*
 * Does /proc/self/mountinfo have `mountpoint` with device `devnum`? With `devnum` NULL,
 * copy the device of the last such mount into `found`.
 */
static int scan_mountinfo(const char *escaped, const char *devnum, char *found, size_t foundlen) {
  static char text[1 << 20];
  int fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  size_t len = 0;
  ssize_t n;
  while (len < sizeof(text) - 1 && (n = read(fd, text + len, sizeof(text) - 1 - len)) > 0) len += (size_t)n;
  close(fd);
  text[len] = '\0';
  int hit = 0;
  char *line = text;
  while (line != NULL && *line != '\0') {
    char *next = strchr(line, '\n');
    if (next != NULL) *next++ = '\0';
    /* id parent major:minor root mountpoint ... */
    char *f[5] = {0};
    char *p = line;
    for (int i = 0; i < 5 && p != NULL; i++) {
      f[i] = p;
      p = strchr(p, ' ');
      if (p != NULL) *p++ = '\0';
    }
    if (f[4] != NULL && strcmp(f[4], escaped) == 0) {
      if (devnum == NULL) {
        strncpy(found, f[2], foundlen - 1);
        found[foundlen - 1] = '\0';
        hit = 1;
      } else if (strcmp(f[2], devnum) == 0) {
        hit = 1;
      }
    }
    line = next;
  }
  return hit;
}

int bs_find_devnum(const char *mountpoint, char *out, size_t outlen) {
  char escaped[8192];
  escape_path(mountpoint, escaped, sizeof(escaped));
  out[0] = '\0';
  return scan_mountinfo(escaped, NULL, out, outlen) ? 0 : -1;
}

/*
 * The watchdog is a small shell script, exec'd in the forked child (exec is one of the
 * few things a child of a threaded process may do), so that it shows as
 * "blksnapfs-watchdog" and not as a second daemon. $1 device, $2 mount point as
 * mountinfo writes it, $3 the mount point.
 */
static const char WATCHDOG_SCRIPT[] =
  "read -r _ <&3 && exit 0\n"
  "while read -r _ _ dev _ mp _; do\n"
  "  if [ \"$dev\" = \"$1\" ] && [ \"$mp\" = \"$2\" ]; then exec umount -i -l -- \"$3\"; fi\n"
  "done < /proc/self/mountinfo\n";

int bs_watchdog_start(bs_session *s) {
  if (s->devnum[0] == '\0') return 0; /* not found in mountinfo: nothing we could check */
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return -1;
  /* Everything the child needs is prepared before fork. */
  static char escaped[8192];
  escape_path(s->mountpoint, escaped, sizeof(escaped));
  char *argv[] = {"blksnapfs-watchdog", "-c", (char *)WATCHDOG_SCRIPT, "blksnapfs-watchdog", s->devnum, escaped, s->mountpoint, NULL};
  char *envp[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL};
  pid_t pid = fork();
  if (pid < 0) {
    close(p[0]);
    close(p[1]);
    return -1;
  }
  if (pid == 0) {
    /* Keep only the pipe: an inherited /dev/fuse descriptor would keep the dead
     * session alive, an inherited origin descriptor its lock. */
    setsid();
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
      dup2(null, 0);
      dup2(null, 1);
      dup2(null, 2);
    }
    if (dup2(p[0], 3) < 0) _exit(1);
    syscall(SYS_close_range, 4U, ~0U, 0U);
    execve("/bin/sh", argv, envp);
    _exit(1);
  }
  close(p[0]);
  s->watchdog_fd = p[1];
  s->watchdog_pid = pid;
  return 0;
}

void bs_watchdog_disarm(bs_session *s) {
  if (s->watchdog_fd < 0) return;
  const char line[] = "ok\n";
  ssize_t n;
  do n = write(s->watchdog_fd, line, sizeof(line) - 1);
  while (n < 0 && errno == EINTR);
  close(s->watchdog_fd);
  s->watchdog_fd = -1;
  if (s->watchdog_pid > 0) waitpid(s->watchdog_pid, NULL, 0);
  s->watchdog_pid = 0;
}

/* Write to /sys/fs/fuse/connections/MINOR/abort: ends the session at once. */
int bs_abort_connection(bs_session *s) {
  const char *colon = strchr(s->devnum, ':');
  if (colon == NULL) return -1;
  char path[128];
  snprintf(path, sizeof(path), "/sys/fs/fuse/connections/%s/abort", colon + 1);
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = write(fd, "1", 1);
  close(fd);
  return n == 1 ? 0 : -1;
}
