/*
 * blksnapfs's libfuse 3 transport: shared declarations.
 *
 * Threads and who owns what:
 *   reader threads    (BS_MAX_READERS at most) each receive requests into a pool buffer
 *                     and process them: a request the fast path can serve (fastpath.c)
 *                     is answered right there, on the thread that received it; any other
 *                     becomes a slot + a message for JavaScript. Readers never wait for
 *                     JavaScript.
 *   JavaScript thread gets the messages in batches through one thread-safe function and
 *                     answers each request exactly once through the reply functions.
 *                     It is the only author of the fast path's shared state, except for
 *                     the change-map marks and the gate counters (fastpath.h).
 *   reply thread      sends large read replies that JavaScript produced (copying 1 MiB
 *                     into the kernel on the JS thread would keep it busy), then frees
 *                     their buffers.
 *   watchdog process  cleans up our own mount if the daemon dies with its session
 *                     live (own-mount.h: ours only); stood down when the session ends.
 *
 * Exactly once: every request that reaches JavaScript holds a slot; a reply must name a
 * live slot with its generation (bs_claim), and claiming makes it dead for everyone
 * else (a second reply, an interrupt, close). Requests answered in C never get a slot.
 *
 * Buffers (buffers.c): a receive buffer belongs to the reader thread that received into
 * it, except that a WRITE going to JavaScript may keep it (slot->held) until its reply;
 * a read buffer belongs to its slot from the moment JavaScript asks for it
 * (readBuffer) until the reply is sent. Buffers still with JavaScript when the session
 * closes are not freed (JavaScript may still write into them): they go to the orphan
 * list, freed when the environment is torn down.
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

/* Request kinds as JavaScript sees them (src/fuse/libfuse3/addon.ts mirrors these). */
enum bs_op {
  OP_LOOKUP = 1, OP_FORGET, OP_GETATTR, OP_SETATTR, OP_OPEN, OP_READ, OP_WRITE, OP_FLUSH,
  OP_RELEASE, OP_FSYNC, OP_OPENDIR, OP_READDIR, OP_RELEASEDIR, OP_MKDIR, OP_RMDIR,
  OP_STATFS, OP_UNLINK, OP_RENAME, OP_MKNOD, OP_SYMLINK, OP_LINK, OP_CREATE,
  OP_LSEEK = 23, OP_FALLOCATE = 24,
  /* news: no reply is expected (id -1) */
  OP_INTERRUPT = 30, OP_END = 31, OP_FAST_DRAINED = 32
};

/* Doubles per message in the batch array: id op ino fh off size arg uid gid pid. */
#define BS_FIELDS 10

/* Receive buffers: libfuse reads up to 256 pages + a header page per request. */
#define BS_RECV_SIZE ((256 + 1) * 4096)
/* Readers: one per core is plenty for JavaScript's share; the fast path wants a few. */
#define BS_MAX_READERS 16
/* Slots grow in blocks; ids are gen * BS_SLOT_LIMIT + index. */
#define BS_SLOT_BLOCK 1024
#define BS_SLOT_BLOCKS 4096
#define BS_SLOT_LIMIT (BS_SLOT_BLOCK * BS_SLOT_BLOCKS) /* 4M slots, 2^22 */
/* Requests of one non-root user that JavaScript may hold at once (parked /events
 * readers, writes held by a freeze): past it, EAGAIN. Far above any honest use, far
 * below what would make the daemon's memory a concern (a slot and a message are a few
 * hundred bytes). Root is not counted. */
#define BS_USER_REQUEST_LIMIT 65536
/* Reads at least this big are answered from the reply thread. */
#define BS_BIG_REPLY (64 * 1024)

/* Bits of replyOpen's flags (src/fuse/libfuse3/addon.ts mirrors these). */
#define BS_OPEN_DIRECT_IO 1
#define BS_OPEN_KEEP_CACHE 2
#define BS_OPEN_NONSEEKABLE 4
#define BS_OPEN_PARALLEL_DIRECT_WRITES 8

typedef struct bs_buf {
  struct bs_buf *next;
  size_t cap;
  char *mem; /* page-aligned */
} bs_buf;

typedef struct bs_slot {
  fuse_req_t req;
  uint32_t index;     /* its place in the table (fixed) */
  uint32_t gen;
  uint32_t next_free; /* index + 1 of the next free slot; 0 ends the list */
  uint8_t live;       /* 1 waiting for its reply, 2 being replied to, 0 free */
  uint8_t op;
  uint8_t posted;     /* its message is queued for JavaScript (interrupts go as news now) */
  uint8_t early_intr; /* interrupted before its message was queued: say so in the message */
  uint32_t uid;       /* whose request, for the per-user limit */
  bs_buf *held;       /* receive buffer holding a write's payload, released at the reply */
  bs_buf *copied;     /* or a copy of the payload (receive buffers ran short) */
  bs_buf *rbuf;       /* buffer a read is answered from (handed to JavaScript) */
  size_t rsize;       /* the read's size: the most JavaScript may ask a buffer for */
  off_t off;          /* readdir position */
} bs_slot;

typedef struct bs_msg {
  struct bs_msg *next;
  double f[BS_FIELDS];
  char *name;     /* malloc'd; lookup, mkdir, rmdir, ... */
  void *data;     /* write payload */
  size_t data_len;
} bs_msg;

typedef struct bs_reply_job {
  struct bs_reply_job *next;
  uint32_t slot;
  size_t len;
} bs_reply_job;

typedef struct bs_user {
  struct bs_user *next;
  uint32_t uid;
  uint32_t requests;
} bs_user;

struct bs_fast;

typedef struct bs_session {
  struct fuse_session *se;
  char *mountpoint;
  bs_own_mount own; /* which mount and FUSE connection are ours (own-mount.h) */
  napi_threadsafe_function tsfn;

  pthread_mutex_t lock; /* slots, users, messages, buffer pools, counters, env_gone */
  pthread_cond_t recv_free;
  bs_slot *slot_blocks[BS_SLOT_BLOCKS];
  uint32_t slot_blocks_used;
  uint32_t free_head; /* index + 1 of the first free slot; 0: none (grow) */
  bs_user *users;     /* non-root users with requests in JavaScript */

  bs_msg *head, *tail;
  int signaled;
  int env_gone; /* the N-API environment is being torn down: post nothing more */

  bs_buf *recv_pool;
  unsigned recv_total, recv_max;
  unsigned recv_held; /* receive buffers kept by writes waiting for JavaScript */
  bs_buf *read_pool[5]; /* size classes 4K 16K 64K 256K 1M */
  unsigned read_pool_len[5];
  bs_buf *orphans; /* buffers JavaScript still had at close (freed at env teardown) */

  pthread_t readers[BS_MAX_READERS];
  int want_readers;  /* the most readers (started on demand, two at first) */
  int nreaders;      /* started (under lock) */
  int readers_alive; /* not yet left (under lock) */
  int readers_idle;  /* waiting in the kernel for a request (atomics) */
  int ended;   /* the kernel ended the session (unmount, abort) */
  int closing; /* close() started: readers stop taking buffers */

  pthread_t reply_thread;
  int reply_started;
  pthread_mutex_t reply_lock;
  pthread_cond_t reply_cond;
  bs_reply_job *reply_head, *reply_tail;
  int reply_stop;

  int watchdog_fd; /* write end of the watchdog's pipe; -1 once stood down (atomic) */
  pid_t watchdog_pid;

  struct bs_fast *fast; /* NULL until JavaScript attaches the fast path (fastpath.c) */

  /* counters for /status (under lock) */
  uint64_t requests;
  uint32_t in_flight, max_in_flight;
  int closed;
} bs_session;

/* session.c */
bs_session *bs_session_create(const char *mountpoint, int argc, char **argv, int readers, char *err, size_t errlen);
int bs_session_start(bs_session *s, char *err, size_t errlen);
void bs_session_close(bs_session *s);
int bs_session_unmount(bs_session *s, int lazy);
void bs_queue_big_reply(bs_session *s, bs_slot *slot, size_t len);

/* slots.c */
double bs_slot_open(bs_session *s, fuse_req_t req, enum bs_op op, bs_slot **out);
bs_slot *bs_claim(bs_session *s, double id);
void bs_release_slot(bs_session *s, bs_slot *slot);
bs_slot *bs_slot_at(bs_session *s, uint32_t index);
double bs_slot_id(bs_slot *slot);
void bs_slots_fail_all(bs_session *s, int error);
void bs_slots_free(bs_session *s);

/* buffers.c */
bs_buf *bs_recv_get(bs_session *s);
void bs_recv_put(bs_session *s, bs_buf *b);
int bs_recv_may_hold(bs_session *s);
bs_buf *bs_read_get(bs_session *s, size_t size);
void bs_read_put(bs_session *s, bs_buf *b);
void bs_orphan(bs_session *s, bs_buf *b);
void bs_pools_free(bs_session *s);
void bs_orphans_free(bs_session *s);

/* ops.c */
extern const struct fuse_lowlevel_ops bs_ops;
void bs_post(bs_session *s, bs_msg *m, bs_slot *slot);
bs_msg *bs_msg_new(double id, enum bs_op op, fuse_ino_t ino);
extern __thread bs_buf *bs_current_recv;
extern __thread int bs_recv_claimed;

/* watchdog.c */
int bs_watchdog_start(bs_session *s, char *err, size_t errlen);
void bs_watchdog_stand_down(bs_session *s);

#endif
