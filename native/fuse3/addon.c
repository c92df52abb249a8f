/*
 * The N-API face of the transport: mount() starts a session and delivers requests to
 * one JavaScript function in batches; the reply functions answer one request each,
 * exactly once (a second answer returns false and sends nothing); fastAttach() hands
 * the fast path (fastpath.h) its shared state.
 * The TypeScript side is src/fuse/libfuse3/addon.ts.
 *
 * Ownership across the boundary: the batch's write payloads are external Buffers over
 * daemon memory, valid until that request's reply; readBuffer() gives a read's buffer,
 * valid until its reply too. After close() JavaScript may still hold such Buffers:
 * their memory is orphaned, not freed, until the environment is torn down (cleanup
 * hook), when no JavaScript runs any more.
 */
#include "session.h"
#include "fastpath.h"
#include <errno.h>
#include <linux/fuse.h>
#include <fcntl.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CHECK(call)                                                  \
  do {                                                               \
    if ((call) != napi_ok) {                                         \
      napi_throw_error(env, NULL, "blksnapfs fuse3: " #call " failed"); \
      return NULL;                                                   \
    }                                                                \
  } while (0)

static napi_value js_bool(napi_env env, int v) {
  napi_value r;
  napi_get_boolean(env, v != 0, &r);
  return r;
}

static void call_js(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)data;
  bs_session *s = context;
  pthread_mutex_lock(&s->lock);
  bs_msg *list = s->head;
  s->head = s->tail = NULL;
  s->signaled = 0;
  pthread_mutex_unlock(&s->lock);
  size_t n = 0;
  for (bs_msg *m = list; m != NULL; m = m->next) n++;
  if (env == NULL || n == 0) goto done;

  napi_value ab, nums, extras, undef;
  void *raw;
  if (napi_create_arraybuffer(env, n * BS_FIELDS * sizeof(double), &raw, &ab) != napi_ok) goto done;
  napi_create_typedarray(env, napi_float64_array, n * BS_FIELDS, ab, 0, &nums);
  napi_create_array_with_length(env, n, &extras);
  napi_get_undefined(env, &undef);
  double *f = raw;
  size_t i = 0;
  for (bs_msg *m = list; m != NULL; m = m->next, i++) {
    memcpy(f + i * BS_FIELDS, m->f, sizeof(m->f));
    napi_value extra = NULL;
    if (m->name != NULL) napi_create_string_utf8(env, m->name, NAPI_AUTO_LENGTH, &extra);
    else if (m->data != NULL) napi_create_external_buffer(env, m->data_len, m->data, NULL, NULL, &extra);
    if (extra != NULL) napi_set_element(env, extras, (uint32_t)i, extra);
  }
  napi_value argv[2] = {nums, extras};
  napi_call_function(env, undef, js_cb, 2, argv, NULL);
done:
  while (list != NULL) {
    bs_msg *m = list;
    list = m->next;
    free(m->name);
    free(m);
  }
}

static bs_session *session_arg(napi_env env, napi_value v) {
  void *p = NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok || p == NULL) {
    napi_throw_type_error(env, NULL, "not a blksnapfs fuse3 session");
    return NULL;
  }
  return p;
}

/* The session of a call whose only argument is the session (NULL: an exception is pending). */
static bs_session *only_session(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1) {
    napi_throw_type_error(env, NULL, "expected a blksnapfs fuse3 session");
    return NULL;
  }
  return session_arg(env, argv[0]);
}

/* A JavaScript array of `n` numbers. */
static napi_value number_array(napi_env env, const double *v, uint32_t n) {
  napi_value arr;
  napi_create_array_with_length(env, n, &arr);
  for (uint32_t i = 0; i < n; i++) {
    napi_value x;
    napi_create_double(env, v[i], &x);
    napi_set_element(env, arr, i, x);
  }
  return arr;
}

static napi_value int32_value(napi_env env, int32_t v) {
  napi_value r;
  napi_create_int32(env, v, &r);
  return r;
}

static char *string_arg(napi_env env, napi_value v) {
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) return NULL;
  char *out = malloc(len + 1);
  if (out == NULL) return NULL;
  napi_get_value_string_utf8(env, v, out, len + 1, &len);
  return out;
}

/* close(): readers joined, requests answered, session destroyed; then the
 * references to JavaScript's memory dropped and the thread-safe function released. */
static void close_session(napi_env env, bs_session *s) {
  if (s->closed) return;
  bs_session_close(s);
  bs_fast_free(s, env);
  napi_release_threadsafe_function(s->tsfn, napi_tsfn_release);
}

/*
 * The environment is going away (process exit), maybe without close(): readers may
 * still be running, blocked in the kernel. They must not touch the thread-safe function
 * any more; they die with the process. After a close(), the memory JavaScript could
 * still name is freed here, when no JavaScript runs any more.
 */
static void env_cleanup(void *arg) {
  bs_session *s = arg;
  pthread_mutex_lock(&s->lock);
  s->env_gone = 1;
  pthread_mutex_unlock(&s->lock);
  if (s->closed) {
    bs_orphans_free(s);
    bs_slots_free(s);
  }
}

/* mount(mountpoint, args: string[], onBatch(nums, extras), readers) -> session */
static napi_value js_mount(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char *mountpoint = string_arg(env, argv[0]);
  uint32_t nargs = 0;
  napi_get_array_length(env, argv[1], &nargs);
  char **fargv = calloc(nargs + 2, sizeof(char *));
  int fargc = 0;
  fargv[fargc++] = strdup("blksnapfs");
  for (uint32_t i = 0; i < nargs; i++) {
    napi_value a;
    napi_get_element(env, argv[1], i, &a);
    fargv[fargc++] = string_arg(env, a);
  }
  int32_t readers = 1;
  napi_get_value_int32(env, argv[3], &readers);
  char err[256] = "";
  /* fuse_session_new copies what it keeps of argv. */
  bs_session *s = bs_session_create(mountpoint, fargc, fargv, readers, err, sizeof(err));
  for (int i = 0; i < fargc; i++) free(fargv[i]);
  free(fargv);
  free(mountpoint);
  if (s == NULL) {
    napi_throw_error(env, "EIO", err);
    return NULL;
  }
  napi_value name;
  napi_create_string_utf8(env, "blksnapfs-fuse3", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, argv[2], NULL, name, 0, 1, NULL, NULL, s, call_js, &s->tsfn) != napi_ok) {
    bs_session_close(s);
    napi_throw_error(env, "EIO", "cannot create the thread-safe function");
    return NULL;
  }
  /* Added after the thread-safe function, so it runs before the function is finalized
   * (hooks run last-in first-out): from then on nothing is posted to it. */
  napi_add_env_cleanup_hook(env, env_cleanup, s);
  if (bs_session_start(s, err, sizeof(err)) != 0) {
    close_session(env, s);
    napi_throw_error(env, "EIO", err[0] ? err : "cannot start the session");
    return NULL;
  }
  napi_value ext;
  CHECK(napi_create_external(env, s, NULL, NULL, &ext));
  return ext;
}

static int get_ids(napi_env env, napi_callback_info info, size_t want, napi_value *argv, bs_session **s, bs_slot **slot) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2) return -1;
  *s = session_arg(env, argv[0]);
  if (*s == NULL) return -1;
  double id;
  if (napi_get_value_double(env, argv[1], &id) != napi_ok) return -1;
  *slot = bs_claim(*s, id);
  return 0;
}

static double num_at(napi_env env, napi_value v) {
  double d = 0;
  napi_get_value_double(env, v, &d);
  return d;
}

static void attr_from(napi_env env, napi_value arr, struct stat *st) {
  void *data = NULL;
  size_t len = 0;
  napi_typedarray_type type;
  napi_value ab;
  size_t off;
  memset(st, 0, sizeof(*st));
  if (napi_get_typedarray_info(env, arr, &type, &len, &data, &ab, &off) != napi_ok || type != napi_float64_array || len < 11) return;
  const double *a = data;
  st->st_ino = (ino_t)a[0];
  st->st_mode = (mode_t)a[1];
  st->st_nlink = (nlink_t)a[2];
  st->st_uid = (uid_t)a[3];
  st->st_gid = (gid_t)a[4];
  st->st_size = (off_t)a[5];
  st->st_blocks = (blkcnt_t)a[6];
  st->st_blksize = (blksize_t)a[7];
  st->st_atim.tv_sec = (time_t)(a[8] / 1000);
  st->st_mtim.tv_sec = (time_t)(a[9] / 1000);
  st->st_ctim.tv_sec = (time_t)(a[10] / 1000);
}

/* replyErr(session, id, errno) */
static napi_value js_reply_err(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  bs_session *s;
  bs_slot *slot;
  if (get_ids(env, info, 3, argv, &s, &slot) != 0) return NULL;
  if (slot == NULL) return js_bool(env, 0);
  int32_t e = EIO;
  napi_get_value_int32(env, argv[2], &e);
  fuse_reply_err(slot->req, e);
  bs_release_slot(s, slot);
  return js_bool(env, 1);
}

/* replyEntry(session, id, attr, entryTimeout, attrTimeout) */
static napi_value js_reply_entry(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  bs_session *s;
  bs_slot *slot;
  if (get_ids(env, info, 5, argv, &s, &slot) != 0) return NULL;
  if (slot == NULL) return js_bool(env, 0);
  struct fuse_entry_param e;
  memset(&e, 0, sizeof(e));
  attr_from(env, argv[2], &e.attr);
  e.ino = e.attr.st_ino;
  e.generation = 1;
  e.entry_timeout = num_at(env, argv[3]);
  e.attr_timeout = num_at(env, argv[4]);
  fuse_reply_entry(slot->req, &e);
  bs_release_slot(s, slot);
  return js_bool(env, 1);
}

/* replyAttr(session, id, attr, attrTimeout) */
static napi_value js_reply_attr(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  bs_session *s;
  bs_slot *slot;
  if (get_ids(env, info, 4, argv, &s, &slot) != 0) return NULL;
  if (slot == NULL) return js_bool(env, 0);
  struct stat st;
  attr_from(env, argv[2], &st);
  fuse_reply_attr(slot->req, &st, num_at(env, argv[3]));
  bs_release_slot(s, slot);
  return js_bool(env, 1);
}

/*
 * replyOpen(session, id, fh, flags: 1 direct_io, 2 keep_cache, 4 nonseekable,
 * 8 parallel direct writes) -> false when nobody will use the handle (a second reply,
 * or the open was interrupted: then the caller must release it).
 * The reply is built here, not by fuse_reply_open: libfuse 3.14's fuse_file_info has
 * no bit for FOPEN_PARALLEL_DIRECT_WRITES (kernel 6.2+), without which the kernel
 * serializes synchronous direct writes to one file on its inode lock.
 */
static napi_value js_reply_open(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  bs_session *s;
  bs_slot *slot;
  if (get_ids(env, info, 4, argv, &s, &slot) != 0) return NULL;
  if (slot == NULL) return js_bool(env, 0);
  int32_t flags = 0;
  napi_get_value_int32(env, argv[3], &flags);
  struct fuse_open_out out;
  memset(&out, 0, sizeof(out));
  out.fh = (uint64_t)num_at(env, argv[2]);
  if (flags & BS_OPEN_DIRECT_IO) out.open_flags |= FOPEN_DIRECT_IO;
  if (flags & BS_OPEN_KEEP_CACHE) out.open_flags |= FOPEN_KEEP_CACHE;
  if (flags & BS_OPEN_NONSEEKABLE) out.open_flags |= FOPEN_NONSEEKABLE;
  if (flags & BS_OPEN_PARALLEL_DIRECT_WRITES) out.open_flags |= FOPEN_PARALLEL_DIRECT_WRITES;
  int res = fuse_reply_buf(slot->req, (const char *)&out, sizeof(out));
  bs_release_slot(s, slot);
  return js_bool(env, res != -ENOENT);
}

/* replyRead(session, id, bytes): the data is in the request's own buffer. */
static napi_value js_reply_read(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  bs_session *s;
  bs_slot *slot;
  if (get_ids(env, info, 3, argv, &s, &slot) != 0) return NULL;
  if (slot == NULL) return js_bool(env, 0);
  double n = num_at(env, argv[2]);
  if (n == 0) {
    fuse_reply_buf(slot->req, NULL, 0);
    bs_release_slot(s, slot);
    return js_bool(env, 1);
  }
  if (slot->rbuf == NULL || !(n > 0) || n > (double)slot->rsize || n > (double)slot->rbuf->cap) {
    fuse_reply_err(slot->req, EIO);
    bs_release_slot(s, slot);
    return js_bool(env, 1);
  }
  if (n >= BS_BIG_REPLY) {
    bs_queue_big_reply(s, slot, (size_t)n);
  } else {
    fuse_reply_buf(slot->req, slot->rbuf->mem, (size_t)n);
    bs_release_slot(s, slot);
  }
  return js_bool(env, 1);
}

/* replyWrite(session, id, bytes) */
static napi_value js_reply_write(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  bs_session *s;
  bs_slot *slot;
  if (get_ids(env, info, 3, argv, &s, &slot) != 0) return NULL;
  if (slot == NULL) return js_bool(env, 0);
  fuse_reply_write(slot->req, (size_t)num_at(env, argv[2]));
  bs_release_slot(s, slot);
  return js_bool(env, 1);
}

/* replyStatfs(session, id, [bsize, frsize, blocks, bfree, bavail, files, ffree, namemax]) */
static napi_value js_reply_statfs(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  bs_session *s;
  bs_slot *slot;
  if (get_ids(env, info, 3, argv, &s, &slot) != 0) return NULL;
  if (slot == NULL) return js_bool(env, 0);
  double a[8] = {0};
  for (uint32_t i = 0; i < 8; i++) {
    napi_value v;
    if (napi_get_element(env, argv[2], i, &v) == napi_ok) a[i] = num_at(env, v);
  }
  struct statvfs st;
  memset(&st, 0, sizeof(st));
  st.f_bsize = (unsigned long)a[0];
  st.f_frsize = (unsigned long)a[1];
  st.f_blocks = (fsblkcnt_t)a[2];
  st.f_bfree = (fsblkcnt_t)a[3];
  st.f_bavail = (fsblkcnt_t)a[4];
  st.f_files = (fsfilcnt_t)a[5];
  st.f_ffree = (fsfilcnt_t)a[6];
  st.f_namemax = (unsigned long)a[7];
  fuse_reply_statfs(slot->req, &st);
  bs_release_slot(s, slot);
  return js_bool(env, 1);
}

/* replyDir(session, id, names: string[], inos: number[], modes: number[], first: number):
 * entries from index `first` on, as many as fit the kernel's buffer; each entry's
 * offset is its index + 1, so the next readdir asks for the rest. */
static napi_value js_reply_dir(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  bs_session *s;
  bs_slot *slot;
  if (get_ids(env, info, 6, argv, &s, &slot) != 0) return NULL;
  if (slot == NULL) return js_bool(env, 0);
  uint32_t count = 0;
  napi_get_array_length(env, argv[2], &count);
  size_t cap = slot->rsize;
  char *buf = malloc(cap > 0 ? cap : 1);
  if (buf == NULL) {
    fuse_reply_err(slot->req, ENOMEM);
    bs_release_slot(s, slot);
    return js_bool(env, 1);
  }
  size_t used = 0;
  uint32_t first = (uint32_t)num_at(env, argv[5]);
  for (uint32_t i = first; i < count; i++) {
    napi_value nv, iv, mv;
    napi_get_element(env, argv[2], i, &nv);
    napi_get_element(env, argv[3], i, &iv);
    napi_get_element(env, argv[4], i, &mv);
    char name[512];
    size_t nlen = 0;
    if (napi_get_value_string_utf8(env, nv, name, sizeof(name), &nlen) != napi_ok) continue;
    struct stat st;
    memset(&st, 0, sizeof(st));
    st.st_ino = (ino_t)num_at(env, iv);
    st.st_mode = (mode_t)num_at(env, mv);
    size_t need = fuse_add_direntry(slot->req, NULL, 0, name, NULL, 0);
    if (used + need > cap) break;
    fuse_add_direntry(slot->req, buf + used, cap - used, name, &st, (off_t)i + 1);
    used += need;
  }
  fuse_reply_buf(slot->req, buf, used);
  free(buf);
  bs_release_slot(s, slot);
  return js_bool(env, 1);
}

/* replyLseek(session, id, offset): the answer of an lseek(SEEK_DATA | SEEK_HOLE). */
static napi_value js_reply_lseek(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  bs_session *s;
  bs_slot *slot;
  if (get_ids(env, info, 3, argv, &s, &slot) != 0) return NULL;
  if (slot == NULL) return js_bool(env, 0);
  double off = num_at(env, argv[2]);
  if (!(off >= 0)) fuse_reply_err(slot->req, EIO);
  else fuse_reply_lseek(slot->req, (off_t)off);
  bs_release_slot(s, slot);
  return js_bool(env, 1);
}

/* unmount(session, lazy) -> 0 or errno */
static napi_value js_unmount(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  bs_session *s = session_arg(env, argv[0]);
  if (s == NULL) return NULL;
  bool lazy = false;
  napi_get_value_bool(env, argv[1], &lazy);
  return int32_value(env, s->closed ? 0 : bs_session_unmount(s, lazy));
}

/* close(session): after the session has ended; tears down threads and the session. */
static napi_value js_close(napi_env env, napi_callback_info info) {
  bs_session *s = only_session(env, info);
  if (s != NULL) close_session(env, s);
  return NULL;
}

/*
 * readBuffer(session, id, length) -> Buffer | null: the buffer read `id` is answered
 * from, at least `length` bytes (at most the read's size), made when first asked for.
 * null when the request is no longer waiting for its reply. The Buffer is daemon
 * memory, valid until the reply.
 */
static napi_value js_read_buffer(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  bs_session *s = session_arg(env, argv[0]);
  if (s == NULL) return NULL;
  double id = num_at(env, argv[1]);
  double want = num_at(env, argv[2]);
  napi_value result;
  napi_get_null(env, &result);
  if (!(id >= 0) || !(want >= 0)) return result;
  uint64_t n = (uint64_t)id;
  uint32_t index = (uint32_t)(n % BS_SLOT_LIMIT);
  uint32_t gen = (uint32_t)(n / BS_SLOT_LIMIT);
  bs_slot *slot = NULL;
  pthread_mutex_lock(&s->lock);
  if (!s->closed && index < s->slot_blocks_used * BS_SLOT_BLOCK) {
    bs_slot *candidate = bs_slot_at(s, index);
    if (candidate->live == 1 && candidate->gen == gen && candidate->op == OP_READ) slot = candidate;
  }
  pthread_mutex_unlock(&s->lock);
  /* Only this thread (JavaScript's) claims or frees a live read's slot, so it stays
   * ours while we give it a buffer. */
  if (slot == NULL) return result;
  size_t len = (size_t)want < slot->rsize ? (size_t)want : slot->rsize;
  if (slot->rbuf != NULL && slot->rbuf->cap < len) {
    bs_read_put(s, slot->rbuf);
    slot->rbuf = NULL;
  }
  if (slot->rbuf == NULL) slot->rbuf = bs_read_get(s, slot->rsize > 0 ? slot->rsize : 1);
  if (slot->rbuf == NULL) {
    napi_throw_error(env, "ENOMEM", "no memory for a read buffer");
    return NULL;
  }
  napi_create_external_buffer(env, len, slot->rbuf->mem, NULL, NULL, &result);
  return result;
}

/* The typed array `v`'s memory and a reference that keeps it alive; -1 if it is not a
 * `type` array of at least `min` elements. */
static int shared_array(napi_env env, napi_value v, napi_typedarray_type type, size_t min, void **data, size_t *len, napi_ref *ref) {
  napi_typedarray_type t;
  napi_value ab;
  size_t off;
  if (napi_get_typedarray_info(env, v, &t, len, data, &ab, &off) != napi_ok || t != type || *len < min) return -1;
  return napi_create_reference(env, v, 1, ref) == napi_ok ? 0 : -1;
}

/*
 * fastAttach(session, header: Int32Array, marks: Uint8Array, cbt: Uint8Array,
 *            originFd, originIno, originSize, chunkSize, blockSize, writable)
 * Publishes the fast path's shared state (fastpath.h); the origin descriptor is
 * duplicated (ours until fastRelease or close). Once per session.
 */
static napi_value js_fast_attach(napi_env env, napi_callback_info info) {
  size_t argc = 10;
  napi_value argv[10];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  bs_session *s = session_arg(env, argv[0]);
  if (s == NULL) return NULL;
  if (argc < 10) {
    napi_throw_type_error(env, NULL, "fastAttach takes 10 arguments");
    return NULL;
  }
  bs_fast *f = calloc(1, sizeof(*f));
  if (f == NULL) {
    napi_throw_error(env, "ENOMEM", "no memory for the fast path");
    return NULL;
  }
  f->fd = -1;
  void *hdr, *marks, *cbt;
  size_t hdr_len, marks_len, cbt_len;
  if (shared_array(env, argv[1], napi_int32_array, BS_HDR_WORDS, &hdr, &hdr_len, &f->refs[0]) != 0 ||
      shared_array(env, argv[2], napi_uint8_array, 0, &marks, &marks_len, &f->refs[1]) != 0 ||
      shared_array(env, argv[3], napi_uint8_array, 1, &cbt, &cbt_len, &f->refs[2]) != 0) {
    bs_fast_free_unpublished(env, f);
    napi_throw_type_error(env, NULL, "fastAttach: header must be an Int32Array, marks and cbt Uint8Arrays");
    return NULL;
  }
  f->hdr = hdr;
  f->marks = marks;
  f->nmarks = marks_len;
  f->cbt = cbt;
  f->nblocks = cbt_len;
  double chunk = num_at(env, argv[7]), block = num_at(env, argv[8]);
  f->origin_ino = (uint64_t)num_at(env, argv[5]);
  f->size = (uint64_t)num_at(env, argv[6]);
  f->chunk_shift = (unsigned)__builtin_ctzll((unsigned long long)chunk);
  f->block_shift = (unsigned)__builtin_ctzll((unsigned long long)block);
  bool writable = false;
  napi_get_value_bool(env, argv[9], &writable);
  f->writable = writable;
  int32_t fd = -1;
  napi_get_value_int32(env, argv[4], &fd);
  if (!(chunk >= 4096) || (1ULL << f->chunk_shift) != (unsigned long long)chunk || !(block >= 4096) ||
      (1ULL << f->block_shift) != (unsigned long long)block || f->size == 0) {
    bs_fast_free_unpublished(env, f);
    napi_throw_range_error(env, NULL, "fastAttach: sizes must be powers of two of at least 4096 and the origin non-empty");
    return NULL;
  }
  f->fd = fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 3) : -1;
  int err = f->fd < 0 ? errno : s->closed ? ESHUTDOWN : bs_fast_attach(s, f);
  if (err != 0) {
    bs_fast_free_unpublished(env, f);
    napi_throw_error(env, "EINVAL", strerror(err));
    return NULL;
  }
  return NULL;
}

/* fastStop(session) -> fast requests still inside (OP_FAST_DRAINED news follows when 0 is reached). */
static napi_value js_fast_stop(napi_env env, napi_callback_info info) {
  bs_session *s = only_session(env, info);
  return s == NULL ? NULL : int32_value(env, bs_fast_stop(s));
}

/* fastRelease(session) -> 0, or EBUSY while fast requests are inside: closes our origin descriptor. */
static napi_value js_fast_release(napi_env env, napi_callback_info info) {
  bs_session *s = only_session(env, info);
  return s == NULL ? NULL : int32_value(env, bs_fast_release(s));
}

/* fastTally(session) -> [begun, ended, pages]: the fast path's origin writes, read
 * `ended` first (src/engine/origin-write-accounting.ts has the contract). */
static napi_value js_fast_tally(napi_env env, napi_callback_info info) {
  bs_session *s = only_session(env, info);
  if (s == NULL) return NULL;
  uint64_t v[3];
  bs_fast_tally(s, &v[0], &v[1], &v[2]);
  double d[3] = {(double)v[0], (double)v[1], (double)v[2]};
  return number_array(env, d, 3);
}

/* stats(session, resetMax) -> [requests, inFlight, maxInFlight, fastOn, fastReads,
 * fastWrites, fastReadBytes, fastWriteBytes, fastSyncs]. Requests and requests in
 * flight count both kinds: those JavaScript answers and those the fast path serves
 * (its most at once is counted apart, so maxInFlight is the larger of the two). */
static napi_value js_stats(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  bs_session *s = session_arg(env, argv[0]);
  if (s == NULL) return NULL;
  bool reset = false;
  if (argc > 1) napi_get_value_bool(env, argv[1], &reset);
  double v[9] = {0};
  pthread_mutex_lock(&s->lock);
  v[0] = (double)s->requests;
  v[1] = s->in_flight;
  v[2] = s->max_in_flight;
  if (reset) s->max_in_flight = s->in_flight;
  pthread_mutex_unlock(&s->lock);
  bs_fast *f = __atomic_load_n(&s->fast, __ATOMIC_ACQUIRE);
  if (f != NULL) {
    int32_t ops = __atomic_load_n(&f->ops, __ATOMIC_RELAXED);
    int32_t max_ops = reset ? __atomic_exchange_n(&f->max_ops, ops & ~BS_OPS_OFF, __ATOMIC_RELAXED) : __atomic_load_n(&f->max_ops, __ATOMIC_RELAXED);
    v[1] += ops & ~BS_OPS_OFF;
    if (max_ops > v[2]) v[2] = max_ops;
    v[3] = (ops & BS_OPS_OFF) ? 0 : 1;
    v[4] = (double)__atomic_load_n(&f->reads, __ATOMIC_RELAXED);
    v[5] = (double)__atomic_load_n(&f->writes, __ATOMIC_RELAXED);
    v[6] = (double)__atomic_load_n(&f->read_bytes, __ATOMIC_RELAXED);
    v[7] = (double)__atomic_load_n(&f->write_bytes, __ATOMIC_RELAXED);
    v[8] = (double)__atomic_load_n(&f->syncs, __ATOMIC_RELAXED);
    v[0] += v[4] + v[5] + v[8];
  }
  return number_array(env, v, 9);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"mount", NULL, js_mount, NULL, NULL, NULL, napi_default, NULL},
    {"replyErr", NULL, js_reply_err, NULL, NULL, NULL, napi_default, NULL},
    {"replyEntry", NULL, js_reply_entry, NULL, NULL, NULL, napi_default, NULL},
    {"replyAttr", NULL, js_reply_attr, NULL, NULL, NULL, napi_default, NULL},
    {"replyOpen", NULL, js_reply_open, NULL, NULL, NULL, napi_default, NULL},
    {"replyRead", NULL, js_reply_read, NULL, NULL, NULL, napi_default, NULL},
    {"replyWrite", NULL, js_reply_write, NULL, NULL, NULL, napi_default, NULL},
    {"replyStatfs", NULL, js_reply_statfs, NULL, NULL, NULL, napi_default, NULL},
    {"replyDir", NULL, js_reply_dir, NULL, NULL, NULL, napi_default, NULL},
    {"replyLseek", NULL, js_reply_lseek, NULL, NULL, NULL, napi_default, NULL},
    {"unmount", NULL, js_unmount, NULL, NULL, NULL, napi_default, NULL},
    {"close", NULL, js_close, NULL, NULL, NULL, napi_default, NULL},
    {"stats", NULL, js_stats, NULL, NULL, NULL, napi_default, NULL},
    {"readBuffer", NULL, js_read_buffer, NULL, NULL, NULL, napi_default, NULL},
    {"fastAttach", NULL, js_fast_attach, NULL, NULL, NULL, napi_default, NULL},
    {"fastStop", NULL, js_fast_stop, NULL, NULL, NULL, napi_default, NULL},
    {"fastRelease", NULL, js_fast_release, NULL, NULL, NULL, napi_default, NULL},
    {"fastTally", NULL, js_fast_tally, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
