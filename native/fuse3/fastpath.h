/*
 * The native fast path: requests that need nothing from the engine are served in C, on
 * the reader thread that received them, from state JavaScript publishes.
 *
 * What it serves (everything else goes to JavaScript, exactly as without it; a request
 * that cannot be decided at once goes to JavaScript, never waits here):
 *   READ of /origin          pread on our own descriptor of the origin (a dup of the
 *                            engine's), clamped at the end (block-device rules).
 *   WRITE of /origin         when the origin is writable, the write gate is open, and no
 *                            live snapshot needs a copy of any chunk it touches (no live
 *                            snapshot at all, or every chunk's mark equals the epoch).
 *                            The change map is marked first, then pwrite.
 *   FSYNC of /origin         fdatasync (what the engine's flush does).
 *   FLUSH of /origin         nothing to do (the origin's view has no flush).
 *
 * The shared state and its one author. The invariant that keeps every snapshot exact
 * is written down where JavaScript owns the state: src/engine/fast-path-state.ts. In
 * short, with the pairings this file relies on:
 *   header[GATE]   bit BS_GATE_CLOSED + the count of C writers inside. C enters with a
 *                  CAS that fails while CLOSED is set (acquire), leaves with a
 *                  fetch_sub (release). JavaScript sets CLOSED (Atomics.or, seq_cst)
 *                  before a take or a freeze and waits for the count to reach 0; the C
 *                  writer whose fetch_sub leaves exactly CLOSED posts OP_FAST_DRAINED so
 *                  JavaScript looks again. JavaScript changes EPOCH, LIVE and ACTIVE only
 *                  while CLOSED is set and the count is 0, and clears CLOSED afterwards
 *                  (Atomics.and, seq_cst): a C writer that gets in reads them after its
 *                  acquiring CAS, so it sees the new values.
 *   header[EPOCH]  1..255. marks[c] == EPOCH: chunk c needs no copy for any live
 *                  snapshot, its copy settled and its origin readers drained.
 *                  JavaScript stores marks (Atomics.store) only from inside its own
 *                  write gate, and bumps EPOCH at a take; it clears every mark when
 *                  EPOCH wraps. C loads marks relaxed: a stale byte is at worst an older
 *                  epoch's (never equal to the current one after a wrap), which sends
 *                  the write to JavaScript.
 *   header[LIVE]   0: no live snapshot, no write needs a copy. Set to 1 only at a take
 *                  (gate closed, drained); set to 0 when the last snapshot is released
 *                  (no snapshot left to need anything, so any time is right).
 *   header[ACTIVE] the change map's open period number, the byte C marks with.
 *   cbt[]          the change map: the same bytes JavaScript's tracker owns. C stores
 *                  ACTIVE into the blocks a write touches, relaxed, before the pwrite;
 *                  JavaScript reads the map (freeze at a take, save at unmount) only
 *                  with the gate closed and drained, and its own marks store the same
 *                  value, so a race between the two is a store of equal bytes.
 *   fast->ops      (C-owned) bit BS_OPS_OFF + the count of fast requests inside; set
 *                  OFF by JavaScript when the engine closes; the origin descriptor is
 *                  closed only after the count reached 0 with OFF set.
 *
 * Memory: JavaScript allocates header, marks and the map as ArrayBuffers (their memory
 * never moves) and the addon holds a reference to each until the session is closed.
 */
#ifndef BLKSNAPFS_FASTPATH_H
#define BLKSNAPFS_FASTPATH_H

#include "session.h"

/* Indexes of the Int32 header (src/engine/fast-path-state.ts mirrors these). */
enum { BS_HDR_GATE = 0, BS_HDR_EPOCH = 1, BS_HDR_LIVE = 2, BS_HDR_ACTIVE = 3, BS_HDR_WORDS = 8 };
#define BS_GATE_CLOSED (1 << 30)
#define BS_OPS_OFF (1 << 30)

typedef struct bs_fast {
  int32_t *hdr;
  uint8_t *marks;
  uint64_t nmarks;
  uint8_t *cbt;
  uint64_t nblocks;
  napi_ref refs[3];
  int fd; /* ours: a dup of the engine's origin descriptor; -1 once released */
  uint64_t origin_ino;
  uint64_t size;
  unsigned chunk_shift, block_shift;
  int writable;
  int32_t ops; /* BS_OPS_OFF + requests inside (atomics) */
  int32_t max_ops; /* the most requests inside at once (atomics) */
  uint64_t reads, writes, read_bytes, write_bytes, syncs; /* atomics, for /status */
  /* The tally of our origin writes for the watch on writes from outside the mount
   * (src/engine/origin-write-accounting.ts): begun (and pages) before the pwrite,
   * release; ended after it, release; read ended, then begun, then pages, acquire. */
  uint64_t w_begun, w_ended, w_pages;
} bs_fast;

/* Each returns 1 if it answered the request (it is then gone), 0 to send it on to JS. */
int bs_fast_read(bs_session *s, fuse_req_t req, fuse_ino_t ino, size_t size, off_t off);
int bs_fast_write(bs_session *s, fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off);
int bs_fast_fsync(bs_session *s, fuse_req_t req, fuse_ino_t ino);
int bs_fast_flush(bs_session *s, fuse_req_t req, fuse_ino_t ino);

/* JavaScript's side (addon.c). */
int bs_fast_attach(bs_session *s, bs_fast *f);
int32_t bs_fast_stop(bs_session *s);
void bs_fast_tally(bs_session *s, uint64_t *begun, uint64_t *ended, uint64_t *pages);
int bs_fast_release(bs_session *s);
void bs_fast_free(bs_session *s, napi_env env);
void bs_fast_free_unpublished(napi_env env, bs_fast *f);
void bs_fast_thread_exit(void);

#endif
