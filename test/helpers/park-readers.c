/*
 * Park N blocking readers of an /events file, one thread each, as whoever runs this
 * (test/pressure.test.ts compiles and runs it as nobody).
 *
 *     park-readers EVENTS_PATH N
 *
 * Each thread opens the file and reads it forever: the backlog first, then each read
 * waits in the daemon for the next event. It prints "parked N refused M" once every
 * thread has opened the file (or failed to), then waits to be killed. Threads, not
 * processes: 9000 of them cost little memory; C, not Python: 9000 Python threads
 * woken at once spend minutes on the interpreter lock.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static const char *path;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int opened, refused;

static void *reader(void *arg) {
  (void)arg;
  int fd = open(path, O_RDONLY);
  pthread_mutex_lock(&lock);
  if (fd < 0) refused++;
  else opened++;
  pthread_cond_signal(&cond);
  pthread_mutex_unlock(&lock);
  if (fd < 0) return NULL;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno != EINTR) return NULL;
  }
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: park-readers EVENTS_PATH N\n");
    return 2;
  }
  path = argv[1];
  int count = atoi(argv[2]);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  for (int i = 0; i < count; i++) {
    pthread_t t;
    if (pthread_create(&t, &attr, reader, NULL) != 0) {
      pthread_mutex_lock(&lock);
      refused++;
      pthread_mutex_unlock(&lock);
    }
  }
  pthread_mutex_lock(&lock);
  while (opened + refused < count) pthread_cond_wait(&cond, &lock);
  printf("parked %d refused %d\n", opened, refused);
  fflush(stdout);
  pthread_mutex_unlock(&lock);
  for (;;) pause();
}
