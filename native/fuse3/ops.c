/*
 * libfuse's low-level callbacks, run on the reader threads. A request the fast path can
 * serve is answered there (fastpath.c); any other gets a slot (its exactly-once guard)
 * and becomes one message for JavaScript. Nothing here waits for JavaScript.
 *
 * News (no reply expected, id -1): FORGET, RELEASE and RELEASEDIR (answered here at
 * once, so they reach JavaScript whatever else is waiting and can never be refused for
 * want of a slot), INTERRUPT, END and FAST_DRAINED.
 */
#include "session.h"
#include "fastpath.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>

__thread bs_buf *bs_current_recv;
__thread int bs_recv_claimed;

static bs_session *session_of(fuse_req_t req) {
  return (bs_session *)fuse_req_userdata(req);
}

bs_msg *bs_msg_new(double id, enum bs_op op, fuse_ino_t ino) {
  bs_msg *m = calloc(1, sizeof(*m));
  if (m == NULL) return NULL;
  m->f[0] = id;
  m->f[1] = op;
  m->f[2] = (double)ino;
  return m;
}

static void msg_free(bs_msg *m) {
  free(m->name);
  free(m);
}

/* Under lock: append `m`. */
static void append(bs_session *s, bs_msg *m) {
  m->next = NULL;
  if (s->tail != NULL) s->tail->next = m;
  else s->head = m;
  s->tail = m;
}

/*
 * Queue a message (of `slot`'s request, or news when `slot` is NULL); wake JavaScript
 * only on the empty -> non-empty edge, so requests that arrive while it is busy reach it
 * together, in one call. A request's message is always queued before any interrupt news
 * of it: an interrupt that came first is queued right behind it, under the same lock.
 * Once the environment is going away, nothing more is queued (the thread-safe function
 * is about to be freed).
 */
void bs_post(bs_session *s, bs_msg *m, bs_slot *slot) {
  pthread_mutex_lock(&s->lock);
  if (s->env_gone) {
    pthread_mutex_unlock(&s->lock);
    msg_free(m);
    return;
  }
  append(s, m);
  if (slot != NULL) {
    slot->posted = 1;
    bs_msg *interrupt = slot->early_intr ? bs_msg_new(-1, OP_INTERRUPT, 0) : NULL;
    if (interrupt != NULL) {
      interrupt->f[6] = m->f[0];
      append(s, interrupt);
    }
  }
  if (!s->signaled) {
    s->signaled = 1;
    napi_call_threadsafe_function(s->tsfn, NULL, napi_tsfn_nonblocking);
  }
  pthread_mutex_unlock(&s->lock);
}

static void fill_ctx(bs_msg *m, fuse_req_t req) {
  const struct fuse_ctx *ctx = fuse_req_ctx(req);
  m->f[7] = ctx->uid;
  m->f[8] = ctx->gid;
  m->f[9] = ctx->pid;
}

/* The common path: slot, message with the caller, optional name. NULL when the request
 * has been answered already (EAGAIN, EBUSY or ENOMEM). */
static bs_msg *begin(fuse_req_t req, enum bs_op op, fuse_ino_t ino, const char *name, bs_slot **slot_out) {
  bs_session *s = session_of(req);
  bs_slot *slot;
  double id = bs_slot_open(s, req, op, &slot);
  if (id < 0) return NULL;
  bs_msg *m = bs_msg_new(id, op, ino);
  if (m != NULL && name != NULL) {
    m->name = strdup(name);
    if (m->name == NULL) {
      free(m);
      m = NULL;
    }
  }
  if (m == NULL) {
    if (bs_claim(s, id) != NULL) {
      fuse_reply_err(req, ENOMEM);
      bs_release_slot(s, slot);
    }
    return NULL;
  }
  fill_ctx(m, req);
  *slot_out = slot;
  return m;
}

static void simple(fuse_req_t req, enum bs_op op, fuse_ino_t ino, const char *name, double fh, double arg) {
  bs_slot *slot;
  bs_msg *m = begin(req, op, ino, name, &slot);
  if (m == NULL) return;
  m->f[3] = fh;
  m->f[6] = arg;
  bs_post(session_of(req), m, slot);
}

/* News that needs no slot; `ino`, `fh` and `arg` as for a request. */
static void post_news(bs_session *s, enum bs_op op, fuse_ino_t ino, double fh, double arg) {
  bs_msg *m = bs_msg_new(-1, op, ino);
  if (m == NULL) return; /* out of memory: a handle or node kept a little longer */
  m->f[3] = fh;
  m->f[6] = arg;
  bs_post(s, m, NULL);
}

/* libfuse calls this (on any reader, with the request still allocated) when the kernel
 * interrupts `req`. The slot may already have been answered (then it is no longer live,
 * or holds another request): nothing to say. Not yet queued: bs_post says it. */
static void on_interrupt(fuse_req_t req, void *data) {
  bs_session *s = session_of(req);
  bs_slot *slot = data;
  bs_msg *m = bs_msg_new(-1, OP_INTERRUPT, 0);
  pthread_mutex_lock(&s->lock);
  int mine = slot->live == 1 && slot->req == req;
  if (mine && !slot->posted) slot->early_intr = 1;
  if (mine && slot->posted && m != NULL && !s->env_gone) {
    m->f[6] = bs_slot_id(slot);
    append(s, m);
    m = NULL;
    if (!s->signaled) {
      s->signaled = 1;
      napi_call_threadsafe_function(s->tsfn, NULL, napi_tsfn_nonblocking);
    }
  }
  pthread_mutex_unlock(&s->lock);
  if (m != NULL) msg_free(m);
}

static void op_init(void *userdata, struct fuse_conn_info *conn) {
  (void)userdata;
  /* 1 MiB requests (256 pages), asynchronous direct I/O so a queue depth reaches us as
   * that many requests, and room for them: the kernel's default of 12 background
   * requests would cap a qd16 stream. Splice measured no better here: off. */
  conn->max_write = 1 << 20;
  conn->max_readahead = 1 << 20;
  conn->max_background = 64;
  conn->congestion_threshold = 48;
  conn->want |= FUSE_CAP_ASYNC_DIO | FUSE_CAP_ASYNC_READ;
  if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) conn->want |= FUSE_CAP_PARALLEL_DIROPS;
  conn->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  simple(req, OP_LOOKUP, parent, name, 0, 0);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  bs_session *s = session_of(req);
  fuse_reply_none(req);
  post_news(s, OP_FORGET, ino, 0, (double)nlookup);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets) {
  bs_session *s = session_of(req);
  for (size_t i = 0; i < count; i++) post_news(s, OP_FORGET, forgets[i].ino, 0, (double)forgets[i].nlookup);
  fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  simple(req, OP_GETATTR, ino, NULL, fi != NULL ? (double)fi->fh : -1, 0);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi) {
  bs_slot *slot;
  bs_msg *m = begin(req, OP_SETATTR, ino, NULL, &slot);
  if (m == NULL) return;
  m->f[3] = fi != NULL ? (double)fi->fh : -1;
  m->f[5] = (double)attr->st_size;
  m->f[6] = to_set;
  bs_post(session_of(req), m, slot);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  simple(req, OP_OPEN, ino, NULL, 0, fi->flags);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  bs_session *s = session_of(req);
  if (bs_fast_read(s, req, ino, size, off)) return;
  bs_slot *slot;
  bs_msg *m = begin(req, OP_READ, ino, NULL, &slot);
  if (m == NULL) return;
  /* No buffer yet: JavaScript asks for one (readBuffer) when it has the data, so a
   * read that waits (an /events reader) holds only its slot. */
  slot->rsize = size;
  m->f[3] = (double)fi->fh;
  m->f[4] = (double)off;
  m->f[5] = (double)size;
  /* Registered before JavaScript can see (and answer) the request, so the slot is
   * still this request's: a reader killed while it waits is told at once. */
  fuse_req_interrupt_func(req, on_interrupt, slot);
  bs_post(s, m, slot);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
  bs_session *s = session_of(req);
  if (bs_fast_write(s, req, ino, buf, size, off)) return;
  bs_slot *slot;
  bs_msg *m = begin(req, OP_WRITE, ino, NULL, &slot);
  if (m == NULL) return;
  if (bs_recv_may_hold(s)) {
    /* The payload stays where libfuse read it: this receive buffer is the write's
     * until its reply. */
    slot->held = bs_current_recv;
    bs_recv_claimed = 1;
    m->data = (void *)buf;
  } else {
    /* Receive buffers are short (many writes wait): copy the payload out, so the
     * readers can go on receiving (thaw, mkdir, reads). */
    slot->copied = bs_read_get(s, size > 0 ? size : 1);
    if (slot->copied == NULL) {
      free(m);
      if (bs_claim(s, bs_slot_id(slot)) != NULL) {
        fuse_reply_err(req, ENOMEM);
        bs_release_slot(s, slot);
      }
      return;
    }
    memcpy(slot->copied->mem, buf, size);
    m->data = slot->copied->mem;
  }
  m->f[3] = (double)fi->fh;
  m->f[4] = (double)off;
  m->f[5] = (double)size;
  m->data_len = size;
  bs_post(s, m, slot);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  if (bs_fast_flush(session_of(req), req, ino)) return;
  simple(req, OP_FLUSH, ino, NULL, (double)fi->fh, 0);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  bs_session *s = session_of(req);
  fuse_reply_err(req, 0);
  post_news(s, OP_RELEASE, ino, (double)fi->fh, 0);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
  if (bs_fast_fsync(session_of(req), req, ino)) return;
  simple(req, OP_FSYNC, ino, NULL, (double)fi->fh, datasync);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  simple(req, OP_OPENDIR, ino, NULL, 0, fi->flags);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  bs_slot *slot;
  bs_msg *m = begin(req, OP_READDIR, ino, NULL, &slot);
  if (m == NULL) return;
  slot->rsize = size;
  slot->off = off;
  m->f[3] = (double)fi->fh;
  m->f[4] = (double)off;
  m->f[5] = (double)size;
  bs_post(session_of(req), m, slot);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  bs_session *s = session_of(req);
  fuse_reply_err(req, 0);
  post_news(s, OP_RELEASEDIR, ino, (double)fi->fh, 0);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode) {
  simple(req, OP_MKDIR, parent, name, 0, mode);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name) {
  simple(req, OP_RMDIR, parent, name, 0, 0);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name) {
  simple(req, OP_UNLINK, parent, name, 0, 0);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent, const char *newname, unsigned int flags) {
  (void)newparent; (void)newname; (void)flags;
  simple(req, OP_RENAME, parent, name, 0, 0);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev) {
  (void)rdev;
  simple(req, OP_MKNOD, parent, name, 0, mode);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name) {
  (void)link;
  simple(req, OP_SYMLINK, parent, name, 0, 0);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname) {
  (void)ino;
  simple(req, OP_LINK, newparent, newname, 0, 0);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi) {
  (void)fi;
  simple(req, OP_CREATE, parent, name, 0, mode);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino) {
  simple(req, OP_STATFS, ino, NULL, 0, 0);
}

static void op_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, struct fuse_file_info *fi);
static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length, struct fuse_file_info *fi);

const struct fuse_lowlevel_ops bs_ops = {
  .init = op_init,
  .lookup = op_lookup,
  .forget = op_forget,
  .forget_multi = op_forget_multi,
  .getattr = op_getattr,
  .setattr = op_setattr,
  .open = op_open,
  .read = op_read,
  .write = op_write,
  .flush = op_flush,
  .release = op_release,
  .fsync = op_fsync,
  .opendir = op_opendir,
  .readdir = op_readdir,
  .releasedir = op_releasedir,
  .mkdir = op_mkdir,
  .rmdir = op_rmdir,
  .unlink = op_unlink,
  .rename = op_rename,
  .mknod = op_mknod,
  .symlink = op_symlink,
  .link = op_link,
  .create = op_create,
  .statfs = op_statfs,
  .lseek = op_lseek,
  .fallocate = op_fallocate,
};

/* lseek with SEEK_DATA or SEEK_HOLE (the kernel answers SEEK_SET, SEEK_CUR and SEEK_END
 * itself): offset in `off`, whence in `arg`; answered with replyLseek or an errno, never
 * ENOSYS (the kernel would stop asking for the whole connection). */
static void op_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, struct fuse_file_info *fi) {
  bs_slot *slot;
  bs_msg *m = begin(req, OP_LSEEK, ino, NULL, &slot);
  if (m == NULL) return;
  m->f[3] = (double)fi->fh;
  m->f[4] = (double)off;
  m->f[6] = whence;
  bs_post(session_of(req), m, slot);
}

/* fallocate (punch hole, zero range): offset in `off`, length in `size`, mode in `arg`;
 * answered with replyErr (0 on success), never ENOSYS, as for lseek. */
static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length, struct fuse_file_info *fi) {
  bs_slot *slot;
  bs_msg *m = begin(req, OP_FALLOCATE, ino, NULL, &slot);
  if (m == NULL) return;
  m->f[3] = (double)fi->fh;
  m->f[4] = (double)offset;
  m->f[5] = (double)length;
  m->f[6] = mode;
  bs_post(session_of(req), m, slot);
}
