/*
 * blksnapfs's libfuse 3 transport: shared declarations.
 *
 * Threads and who owns what:
 *   reader thread(s)  receive requests into pool buffers and turn each into a slot + a
 *                     message for JavaScript; never wait for JavaScript.
 *   JavaScript thread gets the messages in batches through one thread-safe function and
 *                     answers each request exactly once through the reply functions.
 *   reply thread      sends large read replies (copying 1 MiB into the kernel on the JS
 *                     thread would keep it busy), then frees their buffers.
 *   watchdog process  cleans up our own mount if the daemon dies with its session
 *                     live (own-mount.h: ours only); stood down when the session ends.
 * Slots are the exactly-once guard: a reply must name a live slot with its generation.
 */
#ifndef BLKSNAPFS_SESSION_H
#define BLKSNAPFS_SESSION_H

#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#include <node_api.h>
#include "own-mount.h"
#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

/* Request kinds as JavaScript sees them (src/fuse/libfuse3/protocol.ts mirrors these). */
enum bs_op {
  OP_LOOKUP = 1, OP_FORGET, OP_GETATTR, OP_SETATTR, OP_OPEN, OP_READ, OP_WRITE, OP_FLUSH,
  OP_RELEASE, OP_FSYNC, OP_OPENDIR, OP_READDIR, OP_RELEASEDIR, OP_MKDIR, OP_RMDIR,
  OP_STATFS, OP_UNLINK, OP_RENAME, OP_MKNOD, OP_SYMLINK, OP_LINK, OP_CREATE,
  OP_INTERRUPT = 30, OP_END = 31
};

/* Doubles per message in the batch array: id op ino fh off size arg uid gid pid. */
#define BS_FIELDS 10

/* Receive buffers: libfuse reads up to 256 pages + a header page per request. */
#define BS_RECV_SIZE ((256 + 1) * 4096)
#define BS_SLOTS 8192
/* Reads at least this big are answered from the reply thread. */
#define BS_BIG_REPLY (64 * 1024)

typedef struct bs_buf {
  struct bs_buf *next;
  size_t cap;
  char *mem; /* page-aligned */
} bs_buf;

typedef struct bs_slot {
  fuse_req_t req;
  uint32_t gen;
  uint8_t live;
  uint8_t op;
  bs_buf *held;  /* receive buffer holding a write's payload, released at the reply */
  bs_buf *rbuf;  /* buffer a read is answered from */
  size_t rsize;
  off_t off;     /* readdir position */
} bs_slot;

typedef struct bs_msg {
  struct bs_msg *next;
  double f[BS_FIELDS];
  char *name;     /* malloc'd; lookup, mkdir, rmdir, ... */
  void *data;     /* write payload or read buffer */
  size_t data_len;
} bs_msg;

typedef struct bs_reply_job {
  struct bs_reply_job *next;
  uint32_t slot;
  size_t len;
} bs_reply_job;

typedef struct bs_session {
  struct fuse_session *se;
  char *mountpoint;
  bs_own_mount own; /* which mount and FUSE connection are ours (own-mount.h) */
  napi_threadsafe_function tsfn;

  pthread_mutex_t lock; /* slots, messages, buffer pools, counters */
  pthread_cond_t recv_free;
  bs_slot slots[BS_SLOTS];
  uint32_t free_slots[BS_SLOTS];
  uint32_t nfree;

  bs_msg *head, *tail;
  int signaled;

  bs_buf *recv_pool;
  unsigned recv_total, recv_max;
  bs_buf *read_pool[5]; /* size classes 4K 16K 64K 256K 1M */
  unsigned read_pool_len[5];

  pthread_t readers[4];
  int want_readers;
  int nreaders; /* started */
  int readers_alive;
  int ended;   /* the kernel ended the session (unmount, abort) */
  int closing; /* close() started: readers stop taking buffers */

  pthread_t reply_thread;
  pthread_mutex_t reply_lock;
  pthread_cond_t reply_cond;
  bs_reply_job *reply_head, *reply_tail;
  int reply_stop;

  int watchdog_fd; /* write end of the watchdog's pipe; -1 once stood down (atomic) */
  pid_t watchdog_pid;

  /* counters for /status */
  uint64_t requests;
  uint32_t in_flight, max_in_flight;
  int closed;
} bs_session;

/* session.c */
bs_session *bs_session_create(const char *mountpoint, int argc, char **argv, int readers, char *err, size_t errlen);
int bs_session_start(bs_session *s, napi_env env, napi_value on_batch, char *err, size_t errlen);
void bs_session_close(bs_session *s);
int bs_session_unmount(bs_session *s, int lazy);
bs_slot *bs_claim(bs_session *s, double id);
void bs_release_slot(bs_session *s, bs_slot *slot);
void bs_queue_big_reply(bs_session *s, bs_slot *slot, size_t len);

/* buffers.c */
bs_buf *bs_recv_get(bs_session *s);
void bs_recv_put(bs_session *s, bs_buf *b);
bs_buf *bs_read_get(bs_session *s, size_t size);
void bs_read_put(bs_session *s, bs_buf *b);
void bs_pools_free(bs_session *s);

/* ops.c */
extern const struct fuse_lowlevel_ops bs_ops;
void bs_post(bs_session *s, bs_msg *m);
extern __thread bs_buf *bs_current_recv;
extern __thread int bs_recv_claimed;

/* watchdog.c */
int bs_watchdog_start(bs_session *s, char *err, size_t errlen);
void bs_watchdog_stand_down(bs_session *s);

#endif
