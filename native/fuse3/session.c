/*
 * One FUSE session: mount, reader threads, the reply thread, and the close that tears
 * them down in order (readers joined, every unanswered request answered, reply thread
 * joined, session destroyed, watchdog told all is well).
 *
 * Several readers: each receives into its own buffer and processes what it received,
 * so a fast request costs one wake-up and several are served at once. Two start with
 * the session; when a reader takes a request and none is left waiting in the kernel,
 * it starts another (up to the session's limit), as libfuse's own multi-threaded loop
 * does, so a deep queue of slow origin I/O gets as many threads as it keeps busy.
 * Readers stay until the session ends. A reader never
 * calls fuse_session_exit: libfuse 3.14 makes every other reader drop (never answer)
 * the next request it receives once the session is marked exited. The session ends
 * when the kernel ends it (unmount, abort): each reader then gets ENODEV and leaves,
 * and the last one out stands the watchdog down and tells JavaScript. A reader that
 * meets any other receive error ends the session for all by aborting our connection
 * (own-mount.c), so none is left serving alone and no request is silently dropped.
 */
#include "session.h"
#include "fastpath.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

bs_session *bs_session_create(const char *mountpoint, int argc, char **argv, int readers, char *err, size_t errlen) {
  bs_session *s = calloc(1, sizeof(*s));
  if (s == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  pthread_mutex_init(&s->lock, NULL);
  pthread_cond_init(&s->recv_free, NULL);
  pthread_mutex_init(&s->reply_lock, NULL);
  pthread_cond_init(&s->reply_cond, NULL);
  s->watchdog_fd = -1;
  bs_own_mount_init(&s->own);
  s->want_readers = readers < 1 ? 1 : readers > BS_MAX_READERS ? BS_MAX_READERS : readers;
  /* Receive buffers: enough for the writes the kernel may have in flight to be held
   * without a copy (64 background + some synchronous), plus two per reader that are
   * never held (bs_recv_may_hold); past that, payloads are copied out. */
  s->recv_max = 64 + 4 * (unsigned)s->want_readers;
  s->mountpoint = strdup(mountpoint);

  struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
  s->se = fuse_session_new(&args, &bs_ops, sizeof(bs_ops), s);
  fuse_opt_free_args(&args);
  if (s->se == NULL) {
    snprintf(err, errlen, "libfuse refused the options");
    goto fail;
  }
  if (fuse_session_mount(s->se, mountpoint) != 0) {
    snprintf(err, errlen, "cannot mount (see the daemon's stderr)");
    fuse_session_destroy(s->se);
    s->se = NULL;
    goto fail;
  }
  if (bs_own_mount_open(&s->own, mountpoint, err, errlen) != 0) {
    fuse_session_unmount(s->se); /* just mounted, never served: libfuse's own undo */
    fuse_session_destroy(s->se);
    s->se = NULL;
    goto fail;
  }
  return s;
fail:
  free(s->mountpoint);
  free(s);
  return NULL;
}

static void post_end(bs_session *s, int error) {
  bs_msg *m = bs_msg_new(-1, OP_END, 0);
  if (m == NULL) return;
  m->f[3] = error;
  bs_post(s, m, NULL);
}

static void *reader_main(void *arg);

/*
 * Under lock: start one more reader, unless closing or at the limit; 0 or -1. The thread
 * is created under the lock, so `readers[i]` is written before close() can read
 * `nreaders` (it takes the same lock), and the new reader, whose first step takes the
 * lock too, starts only once it is counted.
 */
static int start_reader_locked(bs_session *s) {
  if (s->closing || s->nreaders >= s->want_readers) return -1;
  if (pthread_create(&s->readers[s->nreaders], NULL, reader_main, s) != 0) return -1;
  s->nreaders++;
  s->readers_alive++;
  /* Counted idle from now, so no second one is started for the same need. */
  __atomic_add_fetch(&s->readers_idle, 1, __ATOMIC_ACQ_REL);
  return 0;
}

/* A reader took the last idle place: start one more, if the limit allows. */
static void start_another_reader(bs_session *s) {
  pthread_mutex_lock(&s->lock);
  if (__atomic_load_n(&s->readers_idle, __ATOMIC_ACQUIRE) == 0) start_reader_locked(s);
  pthread_mutex_unlock(&s->lock);
}

/*
 * The hot loop: receive, process, again. A reader keeps its receive buffer from one
 * request to the next unless a write going to JavaScript kept it, and counts itself
 * idle with an atomic, so a request served by the fast path takes no lock here.
 */
static void *reader_main(void *arg) {
  bs_session *s = arg;
  int error = 0;
  bs_buf *b = NULL;
  for (;;) {
    if (b == NULL) b = bs_recv_get(s);
    if (b == NULL) break; /* closing */
    struct fuse_buf fbuf = {.mem = b->mem, .size = BS_RECV_SIZE};
    int res = fuse_session_receive_buf(s->se, &fbuf);
    if (res == -EINTR || res == -EAGAIN) continue;
    if (res <= 0) {
      /* 0: the kernel ended the session (ENODEV). Anything else: end it for everyone. */
      if (res < 0) {
        error = -res;
        bs_own_abort(&s->own); /* our own connection: every reader gets ENODEV */
      }
      break;
    }
    if (__atomic_sub_fetch(&s->readers_idle, 1, __ATOMIC_ACQ_REL) == 0) start_another_reader(s);
    bs_current_recv = b;
    bs_recv_claimed = 0;
    fuse_session_process_buf(s->se, &fbuf);
    if (bs_recv_claimed) b = NULL; /* a write's until its reply */
    __atomic_add_fetch(&s->readers_idle, 1, __ATOMIC_ACQ_REL);
  }
  if (b != NULL) bs_recv_put(s, b);
  bs_fast_thread_exit();
  pthread_mutex_lock(&s->lock);
  int last = --s->readers_alive == 0;
  if (last) s->ended = 1;
  pthread_mutex_unlock(&s->lock);
  /* The last reader out says the session is over: JavaScript starts its shutdown. The
   * watchdog stands down first, before the slow part of shutdown: the session it
   * watched is over (a dead mount of ours still on top, after an abort, is close()'s
   * to release). */
  if (last) bs_watchdog_stand_down(s);
  if (last) post_end(s, error);
  return NULL;
}

static void *reply_main(void *arg) {
  bs_session *s = arg;
  for (;;) {
    pthread_mutex_lock(&s->reply_lock);
    while (s->reply_head == NULL && !s->reply_stop) pthread_cond_wait(&s->reply_cond, &s->reply_lock);
    bs_reply_job *job = s->reply_head;
    if (job == NULL) {
      pthread_mutex_unlock(&s->reply_lock);
      return NULL;
    }
    s->reply_head = job->next;
    if (s->reply_head == NULL) s->reply_tail = NULL;
    pthread_mutex_unlock(&s->reply_lock);
    bs_slot *slot = bs_slot_at(s, job->slot);
    fuse_reply_buf(slot->req, slot->rbuf->mem, job->len);
    bs_release_slot(s, slot);
    free(job);
  }
}

int bs_session_start(bs_session *s, char *err, size_t errlen) {
  if (bs_watchdog_start(s, err, errlen) != 0) return -1;
  if (pthread_create(&s->reply_thread, NULL, reply_main, s) != 0) {
    snprintf(err, errlen, "cannot start the reply thread");
    return -1;
  }
  s->reply_started = 1;
  int first = s->want_readers < 2 ? s->want_readers : 2;
  for (int n = 0; n < first; n++) {
    pthread_mutex_lock(&s->lock);
    int ok = start_reader_locked(s);
    pthread_mutex_unlock(&s->lock);
    if (ok != 0) {
      snprintf(err, errlen, "cannot start a reader thread");
      return -1;
    }
  }
  return 0;
}

/* A read reply JavaScript produced, sent from the reply thread (the slot is claimed). */
void bs_queue_big_reply(bs_session *s, bs_slot *slot, size_t len) {
  bs_reply_job *job = malloc(sizeof(*job));
  if (job == NULL) {
    fuse_reply_buf(slot->req, slot->rbuf->mem, len);
    bs_release_slot(s, slot);
    return;
  }
  job->next = NULL;
  job->slot = slot->index;
  job->len = len;
  pthread_mutex_lock(&s->reply_lock);
  if (s->reply_tail != NULL) s->reply_tail->next = job;
  else s->reply_head = job;
  s->reply_tail = job;
  pthread_cond_signal(&s->reply_cond);
  pthread_mutex_unlock(&s->reply_lock);
}

/* End our session: umount(2) of our mount if it is the top one at the mount point
 * (EBUSY while something uses it, unless `lazy`), else abort our connection
 * (BS_OWN_ABORTED). Never another mount. */
int bs_session_unmount(bs_session *s, int lazy) {
  return bs_own_unmount(&s->own, lazy);
}

void bs_session_close(bs_session *s) {
  if (s->closed) return;
  s->closed = 1;
  pthread_mutex_lock(&s->lock);
  s->closing = 1;
  pthread_cond_broadcast(&s->recv_free);
  pthread_mutex_unlock(&s->lock);
  /* Readers blocked in read(2) leave only when the kernel ends the session; if it has
   * not (a start-up that failed after mounting), end it: our mount detached if it is
   * on top, our connection aborted (a dead mount of ours left on top by an abort is
   * detached too). Never another mount; and libfuse's unmount below then finds the
   * connection dead and leaves the path alone. */
  bs_own_release(&s->own);
  /* No reader starts another once `closing` is set, so nreaders is final now. */
  pthread_mutex_lock(&s->lock);
  int nreaders = s->nreaders;
  pthread_mutex_unlock(&s->lock);
  for (int i = 0; i < nreaders; i++) pthread_join(s->readers[i], NULL);
  s->nreaders = 0;

  pthread_mutex_lock(&s->reply_lock);
  s->reply_stop = 1;
  pthread_cond_signal(&s->reply_cond);
  pthread_mutex_unlock(&s->reply_lock);
  if (s->reply_started) pthread_join(s->reply_thread, NULL);
  s->reply_started = 0;

  /* Every request still unanswered gets EIO now, so none is left to libfuse's session
   * after it is gone; a later reply from JavaScript finds no live slot. */
  bs_slots_fail_all(s, EIO);
  pthread_mutex_lock(&s->lock);
  bs_msg *queued = s->head;
  s->head = s->tail = NULL;
  pthread_mutex_unlock(&s->lock);
  while (queued != NULL) {
    bs_msg *m = queued;
    queued = m->next;
    free(m->name);
    free(m);
  }
  /* The connection is dead (above), so this only closes the device: the mount point
   * may already belong to a new mount, which must not be touched. */
  fuse_session_unmount(s->se);
  fuse_session_destroy(s->se);
  s->se = NULL;
  bs_watchdog_stand_down(s);
  bs_own_mount_close(&s->own);
  bs_pools_free(s);
}
