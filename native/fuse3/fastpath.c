/*
 * The native fast path (see fastpath.h for what it serves and the shared state's
 * pairings; src/engine/fast-path-state.ts for the invariant that keeps snapshots
 * exact). Each function runs on the reader thread that received the request and either
 * answers it completely or leaves it untouched for JavaScript.
 *
 * The shared words are JavaScript's memory, so they are touched with GCC's __atomic
 * builtins on plain int32_t/uint8_t (the same instructions V8's Atomics use), not
 * through C11 _Atomic types.
 */
#include "fastpath.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A read buffer per reader thread, for fast reads only: fuse_reply_buf copies it into
 * the kernel before returning, so it is free again at once. Freed at the thread's end. */
static __thread char *thread_buf;
static __thread size_t thread_buf_cap;

static bs_fast *fast_of(bs_session *s) {
  return __atomic_load_n(&s->fast, __ATOMIC_ACQUIRE);
}

static void post_drained(bs_session *s) {
  bs_msg *m = bs_msg_new(-1, OP_FAST_DRAINED, 0);
  if (m != NULL) bs_post(s, m, NULL);
}

/* Count a fast request in, unless JavaScript has switched the fast path off. */
static int ops_enter(bs_fast *f) {
  int32_t v = __atomic_load_n(&f->ops, __ATOMIC_ACQUIRE);
  do {
    if (v & BS_OPS_OFF) return 0;
  } while (!__atomic_compare_exchange_n(&f->ops, &v, v + 1, 1, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
  /* The most fast requests at once, for /status: written only when exceeded. */
  int32_t max = __atomic_load_n(&f->max_ops, __ATOMIC_RELAXED);
  while (v + 1 > max && !__atomic_compare_exchange_n(&f->max_ops, &max, v + 1, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return 1;
}

static void ops_leave(bs_session *s, bs_fast *f) {
  if (__atomic_fetch_sub(&f->ops, 1, __ATOMIC_ACQ_REL) == (BS_OPS_OFF | 1)) post_drained(s);
}

/* Pass the write gate, unless a take or a freeze holds it closed. */
static int gate_enter(bs_fast *f) {
  int32_t *gate = &f->hdr[BS_HDR_GATE];
  int32_t v = __atomic_load_n(gate, __ATOMIC_ACQUIRE);
  do {
    if (v & BS_GATE_CLOSED) return 0;
  } while (!__atomic_compare_exchange_n(gate, &v, v + 1, 1, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
  return 1;
}

/* The writer that leaves a closed gate empty tells JavaScript to look again. */
static void gate_leave(bs_session *s, bs_fast *f) {
  if (__atomic_fetch_sub(&f->hdr[BS_HDR_GATE], 1, __ATOMIC_ACQ_REL) == (BS_GATE_CLOSED | 1)) post_drained(s);
}

/* Does any chunk of [off, off + n) still need a copy for a live snapshot? */
static int needs_copy(bs_fast *f, uint64_t off, size_t n) {
  if (__atomic_load_n(&f->hdr[BS_HDR_LIVE], __ATOMIC_RELAXED) == 0) return 0;
  uint8_t epoch = (uint8_t)__atomic_load_n(&f->hdr[BS_HDR_EPOCH], __ATOMIC_RELAXED);
  uint64_t first = off >> f->chunk_shift, last = (off + n - 1) >> f->chunk_shift;
  if (last >= f->nmarks) return 1;
  for (uint64_t c = first; c <= last; c++)
    if (__atomic_load_n(&f->marks[c], __ATOMIC_RELAXED) != epoch) return 1;
  return 0;
}

/* Mark the change map for [off, off + n) before the bytes land (as the engine does). */
static void mark_changed(bs_fast *f, uint64_t off, size_t n) {
  uint8_t active = (uint8_t)__atomic_load_n(&f->hdr[BS_HDR_ACTIVE], __ATOMIC_RELAXED);
  uint64_t first = off >> f->block_shift, last = (off + n - 1) >> f->block_shift;
  if (last >= f->nblocks) last = f->nblocks - 1;
  for (uint64_t b = first; b <= last; b++)
    if (__atomic_load_n(&f->cbt[b], __ATOMIC_RELAXED) != active) __atomic_store_n(&f->cbt[b], active, __ATOMIC_RELAXED);
}

/* 0 or an errno; a short transfer is retried, an early end is EIO. */
static int pread_fully(int fd, char *buf, size_t n, off_t off) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = pread(fd, buf + done, n - done, off + (off_t)done);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return errno;
    if (r == 0) return EIO;
    done += (size_t)r;
  }
  return 0;
}

static int pwrite_fully(int fd, const char *buf, size_t n, off_t off) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = pwrite(fd, buf + done, n - done, off + (off_t)done);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return errno;
    if (r == 0) return EIO;
    done += (size_t)r;
  }
  return 0;
}

static char *thread_buffer(size_t n) {
  if (thread_buf_cap >= n) return thread_buf;
  free(thread_buf);
  thread_buf = NULL;
  thread_buf_cap = 0;
  size_t cap = n < (1 << 20) ? (1 << 20) : (n + 4095) & ~(size_t)4095;
  if (posix_memalign((void **)&thread_buf, 4096, cap) != 0) {
    thread_buf = NULL;
    return NULL;
  }
  thread_buf_cap = cap;
  return thread_buf;
}

void bs_fast_thread_exit(void) {
  free(thread_buf);
  thread_buf = NULL;
  thread_buf_cap = 0;
}

int bs_fast_read(bs_session *s, fuse_req_t req, fuse_ino_t ino, size_t size, off_t off) {
  bs_fast *f = fast_of(s);
  if (f == NULL || ino != f->origin_ino || off < 0 || !ops_enter(f)) return 0;
  size_t n = (uint64_t)off >= f->size ? 0 : size < f->size - (uint64_t)off ? size : (size_t)(f->size - (uint64_t)off);
  char *buf = n > 0 ? thread_buffer(n) : NULL;
  if (n > 0 && buf == NULL) {
    ops_leave(s, f);
    return 0; /* no memory here: JavaScript may still have some */
  }
  int err = n > 0 ? pread_fully(f->fd, buf, n, off) : 0;
  if (err != 0) fuse_reply_err(req, err);
  else fuse_reply_buf(req, buf, n);
  __atomic_fetch_add(&f->reads, 1, __ATOMIC_RELAXED);
  __atomic_fetch_add(&f->read_bytes, err == 0 ? n : 0, __ATOMIC_RELAXED);
  ops_leave(s, f);
  return 1;
}

int bs_fast_write(bs_session *s, fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off) {
  bs_fast *f = fast_of(s);
  if (f == NULL || ino != f->origin_ino || !f->writable || off < 0 || size == 0) return 0;
  /* At or past the end: JavaScript answers ENOSPC with its message. */
  if ((uint64_t)off >= f->size) return 0;
  if (!ops_enter(f)) return 0;
  size_t n = size < f->size - (uint64_t)off ? size : (size_t)(f->size - (uint64_t)off);
  if (!gate_enter(f)) {
    ops_leave(s, f);
    return 0;
  }
  if (needs_copy(f, (uint64_t)off, n)) {
    gate_leave(s, f);
    ops_leave(s, f);
    return 0;
  }
  mark_changed(f, (uint64_t)off, n);
  uint64_t pages = (((uint64_t)off + n - 1) >> 12) - ((uint64_t)off >> 12) + 1;
  __atomic_add_fetch(&f->w_pages, pages, __ATOMIC_RELAXED);
  __atomic_add_fetch(&f->w_begun, 1, __ATOMIC_RELEASE);
  int err = pwrite_fully(f->fd, buf, n, off);
  __atomic_add_fetch(&f->w_ended, 1, __ATOMIC_RELEASE);
  gate_leave(s, f);
  if (err != 0) fuse_reply_err(req, err);
  else fuse_reply_write(req, n);
  __atomic_fetch_add(&f->writes, 1, __ATOMIC_RELAXED);
  __atomic_fetch_add(&f->write_bytes, err == 0 ? n : 0, __ATOMIC_RELAXED);
  ops_leave(s, f);
  return 1;
}

int bs_fast_fsync(bs_session *s, fuse_req_t req, fuse_ino_t ino) {
  bs_fast *f = fast_of(s);
  if (f == NULL || ino != f->origin_ino || !ops_enter(f)) return 0;
  int err = fdatasync(f->fd) == 0 ? 0 : errno;
  fuse_reply_err(req, err);
  __atomic_fetch_add(&f->syncs, 1, __ATOMIC_RELAXED);
  ops_leave(s, f);
  return 1;
}

int bs_fast_flush(bs_session *s, fuse_req_t req, fuse_ino_t ino) {
  bs_fast *f = fast_of(s);
  if (f == NULL || ino != f->origin_ino || !ops_enter(f)) return 0;
  fuse_reply_err(req, 0);
  ops_leave(s, f);
  return 1;
}

/* ---- JavaScript's side ------------------------------------------------------------ */

/* Publish `f` (once per session). Its descriptor is already ours. */
int bs_fast_attach(bs_session *s, bs_fast *f) {
  bs_fast *none = NULL;
  return __atomic_compare_exchange_n(&s->fast, &none, f, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED) ? 0 : EEXIST;
}

/* Switch the fast path off; returns the fast requests still inside (an
 * OP_FAST_DRAINED follows when the last one leaves). */
int32_t bs_fast_stop(bs_session *s) {
  bs_fast *f = fast_of(s);
  if (f == NULL) return 0;
  return __atomic_or_fetch(&f->ops, BS_OPS_OFF, __ATOMIC_SEQ_CST) & ~BS_OPS_OFF;
}

/* One reading of the write tally, `ended` before `begun` (fastpath.h). */
void bs_fast_tally(bs_session *s, uint64_t *begun, uint64_t *ended, uint64_t *pages) {
  bs_fast *f = fast_of(s);
  *begun = *ended = *pages = 0;
  if (f == NULL) return;
  *ended = __atomic_load_n(&f->w_ended, __ATOMIC_ACQUIRE);
  *begun = __atomic_load_n(&f->w_begun, __ATOMIC_ACQUIRE);
  *pages = __atomic_load_n(&f->w_pages, __ATOMIC_ACQUIRE);
}

/* Close our origin descriptor: only once switched off and drained (EBUSY otherwise). */
int bs_fast_release(bs_session *s) {
  bs_fast *f = fast_of(s);
  if (f == NULL || f->fd < 0) return 0;
  if (__atomic_load_n(&f->ops, __ATOMIC_ACQUIRE) != BS_OPS_OFF) return EBUSY;
  close(f->fd);
  f->fd = -1;
  return 0;
}

/* A fast path that was never published (attach failed): its descriptor and references. */
void bs_fast_free_unpublished(napi_env env, bs_fast *f) {
  if (f->fd >= 0) close(f->fd);
  for (int i = 0; i < 3; i++)
    if (f->refs[i] != NULL) napi_delete_reference(env, f->refs[i]);
  free(f);
}

/* At close, after the readers are gone: drop the references to JavaScript's memory. */
void bs_fast_free(bs_session *s, napi_env env) {
  bs_fast *f = fast_of(s);
  if (f == NULL) return;
  __atomic_store_n(&s->fast, NULL, __ATOMIC_RELEASE);
  bs_fast_free_unpublished(env, f);
}
