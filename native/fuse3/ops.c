/*
 * libfuse's low-level callbacks, run on the reader thread(s). Each request gets a slot
 * (its exactly-once guard) and becomes one message for JavaScript; nothing here waits
 * for JavaScript. FORGET is answered here (it has no reply) and passed on as news.
 */
#include "session.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>

__thread bs_buf *bs_current_recv;
__thread int bs_recv_claimed;

static bs_session *session_of(fuse_req_t req) {
  return (bs_session *)fuse_req_userdata(req);
}

/* Queue a message; wake JavaScript only on the empty -> non-empty edge, so requests
 * that arrive while it is busy reach it together, in one call. */
void bs_post(bs_session *s, bs_msg *m) {
  int wake = 0;
  m->next = NULL;
  pthread_mutex_lock(&s->lock);
  if (s->tail != NULL) s->tail->next = m;
  else s->head = m;
  s->tail = m;
  if (!s->signaled) {
    s->signaled = 1;
    wake = 1;
  }
  pthread_mutex_unlock(&s->lock);
  if (wake) napi_call_threadsafe_function(s->tsfn, NULL, napi_tsfn_nonblocking);
}

/* A slot for `req`, or -1 (then the request has been answered with EBUSY). */
static double slot_open(bs_session *s, fuse_req_t req, enum bs_op op, bs_slot **out) {
  pthread_mutex_lock(&s->lock);
  if (s->nfree == 0) {
    pthread_mutex_unlock(&s->lock);
    fuse_reply_err(req, EBUSY);
    return -1;
  }
  uint32_t i = s->free_slots[--s->nfree];
  bs_slot *slot = &s->slots[i];
  slot->req = req;
  slot->gen++;
  slot->live = 1;
  slot->op = (uint8_t)op;
  slot->held = NULL;
  slot->rbuf = NULL;
  slot->rsize = 0;
  slot->off = 0;
  s->requests++;
  if (++s->in_flight > s->max_in_flight) s->max_in_flight = s->in_flight;
  double id = (double)i + (double)slot->gen * (double)BS_SLOTS;
  pthread_mutex_unlock(&s->lock);
  *out = slot;
  return id;
}

static bs_msg *msg_new(double id, enum bs_op op, fuse_ino_t ino) {
  bs_msg *m = calloc(1, sizeof(*m));
  if (m == NULL) return NULL;
  m->f[0] = id;
  m->f[1] = op;
  m->f[2] = (double)ino;
  return m;
}

static void fill_ctx(bs_msg *m, fuse_req_t req) {
  const struct fuse_ctx *ctx = fuse_req_ctx(req);
  m->f[7] = ctx->uid;
  m->f[8] = ctx->gid;
  m->f[9] = ctx->pid;
}

/* The common path: slot, message with the caller, optional name; ENOMEM if we cannot. */
static bs_msg *begin(fuse_req_t req, enum bs_op op, fuse_ino_t ino, const char *name, bs_slot **slot_out) {
  bs_session *s = session_of(req);
  bs_slot *slot;
  double id = slot_open(s, req, op, &slot);
  if (id < 0) return NULL;
  bs_msg *m = msg_new(id, op, ino);
  if (m != NULL && name != NULL) {
    m->name = strdup(name);
    if (m->name == NULL) {
      free(m);
      m = NULL;
    }
  }
  if (m == NULL) {
    bs_release_slot(s, slot);
    fuse_reply_err(req, ENOMEM);
    return NULL;
  }
  fill_ctx(m, req);
  if (slot_out != NULL) *slot_out = slot;
  return m;
}

static void simple(fuse_req_t req, enum bs_op op, fuse_ino_t ino, const char *name, double fh, double arg) {
  bs_msg *m = begin(req, op, ino, name, NULL);
  if (m == NULL) return;
  m->f[3] = fh;
  m->f[6] = arg;
  bs_post(session_of(req), m);
}

/* libfuse calls this with the request still allocated; the slot may already have been
 * answered (then it is no longer live, or holds another request): nothing to say. */
static void on_interrupt(fuse_req_t req, void *data) {
  bs_session *s = session_of(req);
  bs_slot *slot = data;
  double id = -1;
  pthread_mutex_lock(&s->lock);
  if (slot->live && slot->req == req) id = (double)(slot - s->slots) + (double)slot->gen * (double)BS_SLOTS;
  pthread_mutex_unlock(&s->lock);
  if (id < 0) return;
  bs_msg *m = msg_new(id, OP_INTERRUPT, 0);
  if (m != NULL) bs_post(s, m);
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

static void post_forget(bs_session *s, fuse_ino_t ino, uint64_t nlookup) {
  bs_msg *m = msg_new(-1, OP_FORGET, ino);
  if (m == NULL) return; /* a node kept a little longer: harmless */
  m->f[6] = (double)nlookup;
  bs_post(s, m);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  bs_session *s = session_of(req);
  fuse_reply_none(req);
  post_forget(s, ino, nlookup);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets) {
  bs_session *s = session_of(req);
  for (size_t i = 0; i < count; i++) post_forget(s, forgets[i].ino, forgets[i].nlookup);
  fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  simple(req, OP_GETATTR, ino, NULL, fi != NULL ? (double)fi->fh : -1, 0);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi) {
  bs_msg *m = begin(req, OP_SETATTR, ino, NULL, NULL);
  if (m == NULL) return;
  m->f[3] = fi != NULL ? (double)fi->fh : -1;
  m->f[5] = (double)attr->st_size;
  m->f[6] = to_set;
  bs_post(session_of(req), m);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  simple(req, OP_OPEN, ino, NULL, 0, fi->flags);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  bs_session *s = session_of(req);
  bs_slot *slot;
  bs_msg *m = begin(req, OP_READ, ino, NULL, &slot);
  if (m == NULL) return;
  bs_buf *b = bs_read_get(s, size > 0 ? size : 1);
  if (b == NULL) {
    free(m);
    bs_release_slot(s, slot);
    fuse_reply_err(req, ENOMEM);
    return;
  }
  slot->rbuf = b;
  slot->rsize = size;
  m->f[3] = (double)fi->fh;
  m->f[4] = (double)off;
  m->f[5] = (double)size;
  m->data = b->mem;
  m->data_len = size;
  /* Registered before JavaScript can see (and answer) the request, so the slot is
   * still this request's: a reader killed while it waits (an /events read) is told at
   * once. If it was interrupted already, on_interrupt runs now, before the request's
   * own message; JavaScript keeps such early news for the request that follows. */
  fuse_req_interrupt_func(req, on_interrupt, slot);
  bs_post(s, m);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
  bs_session *s = session_of(req);
  bs_slot *slot;
  bs_msg *m = begin(req, OP_WRITE, ino, NULL, &slot);
  if (m == NULL) return;
  /* The payload stays where libfuse read it: this receive buffer is the write's until
   * its reply. */
  slot->held = bs_current_recv;
  bs_recv_claimed = 1;
  m->f[3] = (double)fi->fh;
  m->f[4] = (double)off;
  m->f[5] = (double)size;
  m->data = (void *)buf;
  m->data_len = size;
  bs_post(s, m);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  simple(req, OP_FLUSH, ino, NULL, (double)fi->fh, 0);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  simple(req, OP_RELEASE, ino, NULL, (double)fi->fh, 0);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
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
  bs_post(session_of(req), m);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  simple(req, OP_RELEASEDIR, ino, NULL, (double)fi->fh, 0);
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
  bs_msg *m = begin(req, OP_LSEEK, ino, NULL, NULL);
  if (m == NULL) return;
  m->f[3] = (double)fi->fh;
  m->f[4] = (double)off;
  m->f[6] = whence;
  bs_post(session_of(req), m);
}

/* fallocate (punch hole, zero range): offset in `off`, length in `size`, mode in `arg`;
 * answered with replyErr (0 on success), never ENOSYS, as for lseek. */
static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length, struct fuse_file_info *fi) {
  bs_msg *m = begin(req, OP_FALLOCATE, ino, NULL, NULL);
  if (m == NULL) return;
  m->f[3] = (double)fi->fh;
  m->f[4] = (double)offset;
  m->f[5] = (double)length;
  m->f[6] = mode;
  bs_post(session_of(req), m);
}
