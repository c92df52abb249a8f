/*
 * One FUSE session: mount, reader threads, the reply thread, slots, and the close that
 * tears them down in order (readers joined, every unanswered request answered, reply
 * thread joined, session destroyed, watchdog told all is well).
 */
#include "session.h"
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
  s->want_readers = readers < 1 ? 1 : readers > 4 ? 4 : readers;
  /* Enough receive buffers for every write the kernel may have in flight (64
   * background + a few synchronous) plus one per reader; more would only be memory. */
  s->recv_max = 72 + (unsigned)s->want_readers;
  for (uint32_t i = 0; i < BS_SLOTS; i++) s->free_slots[i] = BS_SLOTS - 1 - i;
  s->nfree = BS_SLOTS;
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
  bs_msg *m = calloc(1, sizeof(*m));
  if (m == NULL) return;
  m->f[0] = -1;
  m->f[1] = OP_END;
  m->f[3] = error;
  bs_post(s, m);
}

static void *reader_main(void *arg) {
  bs_session *s = arg;
  int error = 0;
  while (!fuse_session_exited(s->se)) {
    bs_buf *b = bs_recv_get(s);
    if (b == NULL) break;
    struct fuse_buf fbuf = {.mem = b->mem, .size = BS_RECV_SIZE};
    int res = fuse_session_receive_buf(s->se, &fbuf);
    if (res == -EINTR || res == -EAGAIN) {
      bs_recv_put(s, b);
      continue;
    }
    if (res <= 0) {
      bs_recv_put(s, b);
      if (res < 0) error = -res;
      break;
    }
    bs_current_recv = b;
    bs_recv_claimed = 0;
    fuse_session_process_buf(s->se, &fbuf);
    if (!bs_recv_claimed) bs_recv_put(s, b);
  }
  fuse_session_exit(s->se);
  pthread_mutex_lock(&s->lock);
  int last = --s->readers_alive == 0;
  if (last) s->ended = 1;
  pthread_mutex_unlock(&s->lock);
  /* The last reader out says the session is over: JavaScript starts its shutdown. */
  if (last) bs_watchdog_stand_down(s); /* first: nothing is left for it to clean up */
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
    bs_slot *slot = &s->slots[job->slot];
    fuse_reply_buf(slot->req, slot->rbuf->mem, job->len);
    bs_release_slot(s, slot);
    free(job);
  }
}

int bs_session_start(bs_session *s, napi_env env, napi_value on_batch, char *err, size_t errlen) {
  (void)env; (void)on_batch;
  if (bs_watchdog_start(s, err, errlen) != 0) return -1;
  if (pthread_create(&s->reply_thread, NULL, reply_main, s) != 0) {
    snprintf(err, errlen, "cannot start the reply thread");
    return -1;
  }
  pthread_mutex_lock(&s->lock);
  s->readers_alive = s->want_readers;
  pthread_mutex_unlock(&s->lock);
  for (int i = 0; i < s->want_readers; i++) {
    if (pthread_create(&s->readers[i], NULL, reader_main, s) != 0) {
      pthread_mutex_lock(&s->lock);
      s->readers_alive -= s->want_readers - i;
      pthread_mutex_unlock(&s->lock);
      snprintf(err, errlen, "cannot start a reader thread");
      return -1;
    }
    s->nreaders = i + 1;
  }
  return 0;
}

/* The slot `id` names, claimed for its one reply; NULL if it is not live (a second
 * reply, or one after close). */
bs_slot *bs_claim(bs_session *s, double id) {
  if (!(id >= 0)) return NULL;
  uint64_t n = (uint64_t)id;
  uint32_t i = (uint32_t)(n % BS_SLOTS);
  uint32_t gen = (uint32_t)(n / BS_SLOTS);
  bs_slot *slot = NULL;
  pthread_mutex_lock(&s->lock);
  if (s->slots[i].live == 1 && s->slots[i].gen == gen) {
    slot = &s->slots[i];
    slot->live = 2; /* replying: no second claim, no interrupt news */
  }
  pthread_mutex_unlock(&s->lock);
  return slot;
}

/* After the reply: give back what the request held and the slot itself. */
void bs_release_slot(bs_session *s, bs_slot *slot) {
  bs_buf *held = slot->held, *rbuf = slot->rbuf;
  slot->held = NULL;
  slot->rbuf = NULL;
  if (held != NULL) bs_recv_put(s, held);
  if (rbuf != NULL) bs_read_put(s, rbuf);
  pthread_mutex_lock(&s->lock);
  slot->live = 0;
  slot->req = NULL;
  s->free_slots[s->nfree++] = (uint32_t)(slot - s->slots);
  s->in_flight--;
  pthread_mutex_unlock(&s->lock);
}

void bs_queue_big_reply(bs_session *s, bs_slot *slot, size_t len) {
  bs_reply_job *job = malloc(sizeof(*job));
  if (job == NULL) {
    fuse_reply_buf(slot->req, slot->rbuf->mem, len);
    bs_release_slot(s, slot);
    return;
  }
  job->next = NULL;
  job->slot = (uint32_t)(slot - s->slots);
  job->len = len;
  pthread_mutex_lock(&s->reply_lock);
  if (s->reply_tail != NULL) s->reply_tail->next = job;
  else s->reply_head = job;
  s->reply_tail = job;
  pthread_cond_signal(&s->reply_cond);
  pthread_mutex_unlock(&s->reply_lock);
}

/* End our session: umount(2) of our mount if it is the top one at the mount point
 * (EBUSY while something uses it, unless `lazy`), else abort our connection. */
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
  for (int i = 0; i < s->nreaders; i++) pthread_join(s->readers[i], NULL);
  s->nreaders = 0;

  pthread_mutex_lock(&s->reply_lock);
  s->reply_stop = 1;
  pthread_cond_signal(&s->reply_cond);
  pthread_mutex_unlock(&s->reply_lock);
  if (s->reply_thread) pthread_join(s->reply_thread, NULL);

  /* Every request still unanswered gets EIO now, so none is left to libfuse's session
   * after it is gone; a later reply from JavaScript finds no live slot. */
  for (uint32_t i = 0; i < BS_SLOTS; i++) {
    bs_slot *slot = &s->slots[i];
    if (slot->live == 1) {
      slot->live = 2;
      fuse_reply_err(slot->req, EIO);
      bs_release_slot(s, slot);
    }
  }
  while (s->head != NULL) {
    bs_msg *m = s->head;
    s->head = m->next;
    free(m->name);
    free(m);
  }
  s->tail = NULL;
  /* The connection is dead (above), so this only closes the device: the mount point
   * may already belong to a new mount, which must not be touched. */
  fuse_session_unmount(s->se);
  fuse_session_destroy(s->se);
  s->se = NULL;
  bs_watchdog_stand_down(s);
  bs_own_mount_close(&s->own);
  bs_pools_free(s);
}
