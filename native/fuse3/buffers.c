/*
 * The daemon's buffer pools. All under s->lock.
 *
 * Receive buffers are what libfuse reads requests into, one per reader thread at a
 * time. A WRITE going to JavaScript may keep its receive buffer until its reply (the
 * payload reaches JavaScript without a copy), but only while enough stay free for
 * every reader to receive the next request: writes held back (by a freeze, behind a
 * copy) must never leave the readers without a buffer, or `thaw`, `mkdir` and every
 * read would wait behind them. Past that point a write's payload is copied out into a
 * buffer of its own size and the receive buffer goes back at once (bs_recv_may_hold).
 *
 * Read buffers are what a read is answered from, and copies of write payloads; they
 * come in size classes and are reused, because a fresh 1 MiB malloc is an mmap and 256
 * page faults. A read buffer is given to a read only when JavaScript asks for it
 * (readBuffer), so a read that waits (an /events reader) holds none.
 *
 * Orphans: buffers JavaScript still held when the session closed. JavaScript may yet
 * write into them (a read finishing late), so they are freed only when the N-API
 * environment is torn down.
 */
#include "session.h"
#include <stdlib.h>

static const size_t read_classes[5] = {4096, 16384, 65536, 262144, 1048576};
/* Buffers kept per class once free: enough for a deep queue of small reads, while big
 * ones are few, so an idle daemon does not sit on tens of MiB. */
static const unsigned read_keep[5] = {64, 64, 64, 16, 16};

static bs_buf *buf_alloc(size_t cap) {
  bs_buf *b = calloc(1, sizeof(*b));
  if (b == NULL) return NULL;
  if (posix_memalign((void **)&b->mem, 4096, cap) != 0) {
    free(b);
    return NULL;
  }
  b->cap = cap;
  return b;
}

static void buf_free(bs_buf *b) {
  free(b->mem);
  free(b);
}

/* A receive buffer; waits while every one is in use (back-pressure on the kernel,
 * bounded memory). NULL once the session is closing. */
bs_buf *bs_recv_get(bs_session *s) {
  pthread_mutex_lock(&s->lock);
  for (;;) {
    if (s->closing) {
      pthread_mutex_unlock(&s->lock);
      return NULL;
    }
    if (s->recv_pool != NULL) {
      bs_buf *b = s->recv_pool;
      s->recv_pool = b->next;
      pthread_mutex_unlock(&s->lock);
      return b;
    }
    if (s->recv_total < s->recv_max) {
      s->recv_total++;
      pthread_mutex_unlock(&s->lock);
      bs_buf *b = buf_alloc(BS_RECV_SIZE);
      if (b != NULL) return b;
      pthread_mutex_lock(&s->lock);
      s->recv_total--;
    }
    pthread_cond_wait(&s->recv_free, &s->lock);
  }
}

void bs_recv_put(bs_session *s, bs_buf *b) {
  pthread_mutex_lock(&s->lock);
  b->next = s->recv_pool;
  s->recv_pool = b;
  pthread_cond_signal(&s->recv_free);
  pthread_mutex_unlock(&s->lock);
}

/* May a write going to JavaScript keep the receive buffer it arrived in? Yes while
 * two buffers per reader stay available to receive with; the caller then counts it
 * held (and the release uncounts it). */
int bs_recv_may_hold(bs_session *s) {
  pthread_mutex_lock(&s->lock);
  unsigned reserve = 2 * (unsigned)s->want_readers;
  int ok = s->recv_held + reserve < s->recv_max;
  if (ok) s->recv_held++;
  pthread_mutex_unlock(&s->lock);
  return ok;
}

static int read_class(size_t size) {
  for (int i = 0; i < 5; i++)
    if (size <= read_classes[i]) return i;
  return -1;
}

bs_buf *bs_read_get(bs_session *s, size_t size) {
  int c = read_class(size);
  if (c < 0) return buf_alloc((size + 4095) & ~(size_t)4095);
  pthread_mutex_lock(&s->lock);
  bs_buf *b = s->read_pool[c];
  if (b != NULL) {
    s->read_pool[c] = b->next;
    s->read_pool_len[c]--;
  }
  pthread_mutex_unlock(&s->lock);
  return b != NULL ? b : buf_alloc(read_classes[c]);
}

void bs_read_put(bs_session *s, bs_buf *b) {
  int c = read_class(b->cap);
  if (c < 0 || read_classes[c] != b->cap) {
    buf_free(b);
    return;
  }
  pthread_mutex_lock(&s->lock);
  if (s->read_pool_len[c] < read_keep[c]) {
    b->next = s->read_pool[c];
    s->read_pool[c] = b;
    s->read_pool_len[c]++;
    b = NULL;
  }
  pthread_mutex_unlock(&s->lock);
  if (b != NULL) buf_free(b);
}

/* A buffer JavaScript may still write into after the session closed: keep it. */
void bs_orphan(bs_session *s, bs_buf *b) {
  pthread_mutex_lock(&s->lock);
  b->next = s->orphans;
  s->orphans = b;
  pthread_mutex_unlock(&s->lock);
}

/* At close, after every thread that could hold a buffer has stopped. */
void bs_pools_free(bs_session *s) {
  while (s->recv_pool != NULL) {
    bs_buf *b = s->recv_pool;
    s->recv_pool = b->next;
    buf_free(b);
  }
  for (int c = 0; c < 5; c++) {
    while (s->read_pool[c] != NULL) {
      bs_buf *b = s->read_pool[c];
      s->read_pool[c] = b->next;
      buf_free(b);
    }
    s->read_pool_len[c] = 0;
  }
}

/* At environment teardown: JavaScript runs no more. */
void bs_orphans_free(bs_session *s) {
  pthread_mutex_lock(&s->lock);
  bs_buf *list = s->orphans;
  s->orphans = NULL;
  pthread_mutex_unlock(&s->lock);
  while (list != NULL) {
    bs_buf *b = list;
    list = b->next;
    buf_free(b);
  }
}
