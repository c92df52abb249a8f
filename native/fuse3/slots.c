/*
 * Slots: the exactly-once guard of every request that goes to JavaScript.
 *
 * A request gets a slot when it is handed on; JavaScript answers it by the slot's id
 * (index + generation), and bs_claim lets exactly one answer through: it turns the slot
 * from live (1) to replying (2) under the lock, so a second reply, a late interrupt or
 * close find it no longer theirs. bs_release_slot gives back what the request held and
 * frees the slot after its reply was sent.
 *
 * The table grows in blocks (never shrinks, never moves: a slot's address is stable,
 * which the interrupt callback relies on) up to BS_SLOT_LIMIT, so waiting requests
 * (parked /events readers, writes held by a freeze) do not use up a fixed capacity that
 * everybody else needs. What bounds one user is BS_USER_REQUEST_LIMIT; root is not
 * counted. All under s->lock.
 */
#include "session.h"
#include <errno.h>
#include <stdlib.h>

/* Generations wrap here: id = gen * BS_SLOT_LIMIT + index stays below 2^53, exact in a double. */
#define GEN_MASK ((1u << 30) - 1)

bs_slot *bs_slot_at(bs_session *s, uint32_t index) {
  return &s->slot_blocks[index / BS_SLOT_BLOCK][index % BS_SLOT_BLOCK];
}

/* Under lock. */
static double id_of(uint32_t index, uint32_t gen) {
  return (double)gen * (double)BS_SLOT_LIMIT + (double)index;
}

double bs_slot_id(bs_slot *slot) {
  return id_of(slot->index, slot->gen);
}

/* Under lock: one more block of free slots; -1 when the table is at its limit or memory is short. */
static int grow(bs_session *s) {
  if (s->slot_blocks_used == BS_SLOT_BLOCKS) return -1;
  bs_slot *block = calloc(BS_SLOT_BLOCK, sizeof(*block));
  if (block == NULL) return -1;
  uint32_t first = s->slot_blocks_used * BS_SLOT_BLOCK;
  for (uint32_t i = 0; i < BS_SLOT_BLOCK; i++) {
    block[i].index = first + i;
    block[i].next_free = i + 1 < BS_SLOT_BLOCK ? first + i + 2 : s->free_head;
  }
  s->slot_blocks[s->slot_blocks_used++] = block;
  s->free_head = first + 1;
  return 0;
}

/* Under lock: the count of `uid`'s requests in JavaScript, created at 0 when `create`. */
static bs_user *user_of(bs_session *s, uint32_t uid, int create) {
  for (bs_user *u = s->users; u != NULL; u = u->next)
    if (u->uid == uid) return u;
  if (!create) return NULL;
  bs_user *u = calloc(1, sizeof(*u));
  if (u == NULL) return NULL;
  u->uid = uid;
  u->next = s->users;
  s->users = u;
  return u;
}

/* Under lock: `uid` has one request fewer in JavaScript (`done`), or none was added;
 * a user with no request left is forgotten. */
static void user_done(bs_session *s, uint32_t uid, int done) {
  if (uid == 0) return;
  for (bs_user **p = &s->users; *p != NULL; p = &(*p)->next) {
    bs_user *u = *p;
    if (u->uid != uid) continue;
    if (done) u->requests--;
    if (u->requests == 0) {
      *p = u->next;
      free(u);
    }
    return;
  }
}

/* A slot for `req`, or -1 (then the request has been answered: EAGAIN past the
 * caller's limit, EBUSY when no slot can be had). */
double bs_slot_open(bs_session *s, fuse_req_t req, enum bs_op op, bs_slot **out) {
  uint32_t uid = (uint32_t)fuse_req_ctx(req)->uid;
  int refuse = 0;
  pthread_mutex_lock(&s->lock);
  bs_user *user = NULL;
  if (uid != 0) {
    user = user_of(s, uid, 1);
    if (user == NULL) refuse = ENOMEM;
    else if (user->requests >= BS_USER_REQUEST_LIMIT) refuse = EAGAIN;
  }
  if (refuse == 0 && s->free_head == 0 && grow(s) != 0) refuse = EBUSY;
  if (refuse != 0) {
    if (user != NULL) user_done(s, uid, 0);
    pthread_mutex_unlock(&s->lock);
    fuse_reply_err(req, refuse);
    return -1;
  }
  uint32_t index = s->free_head - 1;
  bs_slot *slot = bs_slot_at(s, index);
  s->free_head = slot->next_free;
  if (user != NULL) user->requests++;
  slot->req = req;
  slot->gen = (slot->gen + 1) & GEN_MASK;
  slot->next_free = 0;
  slot->live = 1;
  slot->op = (uint8_t)op;
  slot->posted = 0;
  slot->early_intr = 0;
  slot->uid = uid;
  slot->held = NULL;
  slot->copied = NULL;
  slot->rbuf = NULL;
  slot->rsize = 0;
  slot->off = 0;
  s->requests++;
  if (++s->in_flight > s->max_in_flight) s->max_in_flight = s->in_flight;
  double id = id_of(index, slot->gen);
  pthread_mutex_unlock(&s->lock);
  *out = slot;
  return id;
}

/* The slot `id` names, claimed for its one reply; NULL if it is not live (a second
 * reply, or one after close). */
bs_slot *bs_claim(bs_session *s, double id) {
  if (!(id >= 0)) return NULL;
  uint64_t n = (uint64_t)id;
  uint32_t index = (uint32_t)(n % BS_SLOT_LIMIT);
  uint32_t gen = (uint32_t)(n / BS_SLOT_LIMIT);
  bs_slot *slot = NULL;
  pthread_mutex_lock(&s->lock);
  if (index < s->slot_blocks_used * BS_SLOT_BLOCK) {
    bs_slot *candidate = bs_slot_at(s, index);
    if (candidate->live == 1 && candidate->gen == gen) {
      slot = candidate;
      slot->live = 2; /* replying: no second claim, no interrupt news */
    }
  }
  pthread_mutex_unlock(&s->lock);
  return slot;
}

/* Under lock: back on the free list. */
static void slot_free(bs_session *s, bs_slot *slot) {
  user_done(s, slot->uid, 1);
  slot->live = 0;
  slot->req = NULL;
  slot->next_free = s->free_head;
  s->free_head = slot->index + 1;
  s->in_flight--;
}

/* After the reply: give back what the request held and the slot itself. */
void bs_release_slot(bs_session *s, bs_slot *slot) {
  bs_buf *held = slot->held, *copied = slot->copied, *rbuf = slot->rbuf;
  slot->held = slot->copied = slot->rbuf = NULL;
  if (held != NULL) bs_recv_put(s, held);
  if (copied != NULL) bs_read_put(s, copied);
  if (rbuf != NULL) bs_read_put(s, rbuf);
  pthread_mutex_lock(&s->lock);
  if (held != NULL) s->recv_held--;
  slot_free(s, slot);
  pthread_mutex_unlock(&s->lock);
}

/* At close, after the readers and the reply thread have stopped: every request still
 * waiting for JavaScript gets `error`. JavaScript may still hold their buffers (and
 * write into a read's): those are orphaned, not freed. */
void bs_slots_fail_all(bs_session *s, int error) {
  for (uint32_t i = 0; i < s->slot_blocks_used * BS_SLOT_BLOCK; i++) {
    pthread_mutex_lock(&s->lock);
    bs_slot *slot = bs_slot_at(s, i);
    int mine = slot->live == 1;
    if (mine) slot->live = 2;
    pthread_mutex_unlock(&s->lock);
    if (!mine) continue;
    fuse_reply_err(slot->req, error);
    if (slot->held != NULL) bs_orphan(s, slot->held);
    if (slot->copied != NULL) bs_orphan(s, slot->copied);
    if (slot->rbuf != NULL) bs_orphan(s, slot->rbuf);
    pthread_mutex_lock(&s->lock);
    if (slot->held != NULL) s->recv_held--;
    slot->held = slot->copied = slot->rbuf = NULL;
    slot_free(s, slot);
    pthread_mutex_unlock(&s->lock);
  }
}

/* At close, once nothing can name a slot any more. */
void bs_slots_free(bs_session *s) {
  for (uint32_t b = 0; b < s->slot_blocks_used; b++) {
    free(s->slot_blocks[b]);
    s->slot_blocks[b] = NULL;
  }
  s->slot_blocks_used = 0;
  s->free_head = 0;
  while (s->users != NULL) {
    bs_user *u = s->users;
    s->users = u->next;
    free(u);
  }
}
