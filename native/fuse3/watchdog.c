/*
 * If the daemon dies (kill -9, a crash), its mount must not stay behind as "Transport
 * endpoint is not connected". libfuse 3 does this with fusermount3's auto_unmount,
 * which this machine does not have (Debian's fuse3 package would remove libfuse 2's
 * fusermount). So: a watchdog process (blksnapfs-watchdog, watchdog-main.c, built next
 * to the addon) started at mount time waits on a pipe. The daemon stands it down (a
 * line) the moment its session ends, before the slow part of shutdown; end of file
 * means the daemon died with its session live, and the watchdog then cleans up our own
 * mount only (own-mount.h: never a newer mount at the same path, never one stacked over
 * ours, whatever their device numbers).
 */
#include "session.h"
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* build/Release/blksnapfs-watchdog, next to this addon: malloc'd, or NULL. */
static char *watchdog_path(void) {
  Dl_info info;
  if (dladdr((void *)watchdog_path, &info) == 0 || info.dli_fname == NULL) return NULL;
  const char *slash = strrchr(info.dli_fname, '/');
  size_t dir = slash == NULL ? 0 : (size_t)(slash - info.dli_fname) + 1;
  size_t len = dir + sizeof(BS_WATCHDOG_NAME);
  char *path = malloc(len);
  if (path == NULL) return NULL;
  memcpy(path, info.dli_fname, dir);
  memcpy(path + dir, BS_WATCHDOG_NAME, sizeof(BS_WATCHDOG_NAME));
  return path;
}

/* In the forked child of a threaded process: async-signal-safe calls only, then exec.
 * Keeps exactly fd 3 (the pipe), fd 4 (our fusectl directory) and `report` (close on
 * exec: it tells the parent why an exec failed). An inherited /dev/fuse descriptor
 * would keep a dead session alive, an inherited origin descriptor its lock. */
static void child(int pipe_rd, int conn_dir, int report, const char *exe, char *const argv[], char *const envp[]) {
  sigset_t all;
  sigemptyset(&all);
  sigprocmask(SIG_SETMASK, &all, NULL);
  setsid();
  /* Above 5 first, so that placing them on 3, 4, 5 cannot overwrite one another. */
  int a = fcntl(pipe_rd, F_DUPFD, 6), b = fcntl(conn_dir, F_DUPFD, 6), c = fcntl(report, F_DUPFD, 6);
  if (a < 0 || b < 0 || c < 0 || dup2(a, BS_WATCHDOG_PIPE_FD) < 0 || dup2(b, BS_WATCHDOG_CONN_FD) < 0 || dup2(c, 5) < 0 ||
      fcntl(5, F_SETFD, FD_CLOEXEC) < 0) {
    int err = errno;
    ssize_t n = write(c >= 0 ? c : report, &err, sizeof(err));
    (void)n;
    _exit(127);
  }
  syscall(SYS_close_range, 6U, ~0U, 0U);
  int null = open("/dev/null", O_RDWR);
  if (null >= 0) {
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
    if (null > 5) close(null);
  }
  execve(exe, argv, envp);
  int err = errno;
  ssize_t n = write(5, &err, sizeof(err));
  (void)n;
  _exit(127);
}

int bs_watchdog_start(bs_session *s, char *err, size_t errlen) {
  char *exe = watchdog_path();
  if (exe == NULL) {
    snprintf(err, errlen, "cannot find the addon's own path");
    return -1;
  }
  char dev[32];
  snprintf(dev, sizeof(dev), "%u:%u", s->own.dev_major, s->own.dev_minor);
  char *argv[] = {BS_WATCHDOG_NAME, dev, s->own.path, NULL};
  /* A clean environment; a sanitizer build's options pass (so its reports reach a log). */
  static const char *const passed[] = {"ASAN_OPTIONS", "UBSAN_OPTIONS", "TSAN_OPTIONS"};
  char *envp[5] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL, NULL, NULL, NULL};
  char kept[3][512];
  for (int i = 0, n = 1; i < 3; i++) {
    const char *v = getenv(passed[i]);
    if (v != NULL && (size_t)snprintf(kept[i], sizeof(kept[i]), "%s=%s", passed[i], v) < sizeof(kept[i])) envp[n++] = kept[i];
  }
  int life[2], report[2];
  if (pipe2(life, O_CLOEXEC) != 0) goto fail_errno;
  if (pipe2(report, O_CLOEXEC) != 0) {
    int e = errno;
    close(life[0]);
    close(life[1]);
    errno = e;
    goto fail_errno;
  }
  pid_t pid = fork();
  if (pid == 0) child(life[0], s->own.conn_dir, report[1], exe, argv, envp);
  int fork_errno = errno;
  close(life[0]);
  close(report[1]);
  int exec_errno = 0;
  if (pid > 0) {
    /* End of file: the exec happened (close on exec). An int: the child's errno. */
    ssize_t n;
    do n = read(report[0], &exec_errno, sizeof(exec_errno));
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof(exec_errno)) exec_errno = 0;
  }
  close(report[0]);
  if (pid < 0 || exec_errno != 0) {
    close(life[1]);
    if (pid > 0) waitpid(pid, NULL, 0);
    snprintf(err, errlen, "cannot start %s: %s", exe, strerror(pid < 0 ? fork_errno : exec_errno));
    free(exe);
    return -1;
  }
  free(exe);
  s->watchdog_fd = life[1];
  s->watchdog_pid = pid;
  return 0;
fail_errno:
  snprintf(err, errlen, "cannot start the watchdog: %s", strerror(errno));
  free(exe);
  return -1;
}

/* The session is over: the watchdog has nothing left to watch. Safe to call from any
 * thread, any number of times (the first call does it). */
void bs_watchdog_stand_down(bs_session *s) {
  int fd = __atomic_exchange_n(&s->watchdog_fd, -1, __ATOMIC_ACQ_REL);
  if (fd < 0) return;
  const char line[] = "ok\n";
  ssize_t n;
  do n = write(fd, line, sizeof(line) - 1);
  while (n < 0 && errno == EINTR);
  close(fd);
  pid_t pid = __atomic_exchange_n(&s->watchdog_pid, 0, __ATOMIC_ACQ_REL);
  if (pid > 0) {
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) continue;
  }
}
