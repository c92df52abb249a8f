/**
 * The freeze state machine on the write gate itself (no mount needed): a freeze waits
 * for the writes inside; a take shares the closed gate; a freeze whose writes in flight
 * outlast its deadline, or that is thawed while it waits, fails and leaves the gate open.
 */
import test from 'ava';
import { WriteBarrier } from '../src/engine/write-barrier.js';
import { OriginFreeze } from '../src/engine/origin-freeze.js';
import { EventQueue } from '../src/engine/event-queue.js';
import { silentLogger } from '../src/engine/logger.js';
import { BlksnapError } from '../src/errors.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function parts(): { barrier: WriteBarrier; events: EventQueue; freeze: OriginFreeze } {
  const barrier = new WriteBarrier();
  const events = new EventQueue();
  return { barrier, events, freeze: new OriginFreeze(barrier, events, silentLogger) };
}

function types(events: EventQueue): string[] {
  const out: string[] = [];
  for (let s = events.oldestSeq; s < events.headSeq; s++) {
    const e = events.get(s);
    if (e !== undefined) out.push(e.type === 'thawed' ? `thawed:${String(e.fields['reason'])}` : e.type);
  }
  return out;
}

test('freeze waits for the write inside, holds new ones, and a take shares the closed gate', async (t) => {
  const { barrier, events, freeze } = parts();
  t.is(barrier.enter(), null, 'a write in flight');
  let frozen = false;
  const freezing = freeze.freeze(10_000).then(() => (frozen = true));
  await sleep(50);
  t.false(frozen, 'freeze returns only once the write in flight has left');
  barrier.leave();
  await freezing;
  t.not(freeze.frozenUntil, null);
  t.not(barrier.enter(), null, 'a new write waits');
  t.is(await barrier.quiesce(() => 'taken'), 'taken', 'a take runs under the freeze');
  t.not(barrier.enter(), null, 'the take did not open the gate');
  await t.throwsAsync(freeze.freeze(1000), { instanceOf: BlksnapError, message: /already frozen/ });
  freeze.thaw();
  t.is(barrier.enter(), null, 'open after thaw');
  barrier.leave();
  t.throws(() => freeze.thaw(), { message: /not frozen/ });
  t.deepEqual(types(events), ['frozen', 'thawed:thaw']);
});

test('a freeze whose writes in flight outlast the deadline fails with ETIMEDOUT and freezes nothing', async (t) => {
  const { barrier, events, freeze } = parts();
  t.is(barrier.enter(), null);
  const err = await t.throwsAsync(freeze.freeze(100));
  t.is((err as BlksnapError).code, 'ETIMEDOUT');
  t.is(freeze.frozenUntil, null);
  barrier.leave();
  t.is(barrier.enter(), null, 'the gate is open');
  barrier.leave();
  t.deepEqual(types(events), [], 'no frozen, so no thawed');
});

test('thaw while a freeze waits for writes in flight: the freeze fails with EINTR', async (t) => {
  const { barrier, freeze } = parts();
  t.is(barrier.enter(), null);
  const freezing = freeze.freeze(10_000);
  await sleep(20);
  freeze.thaw();
  const err = await t.throwsAsync(freezing);
  t.is((err as BlksnapError).code, 'EINTR');
  barrier.leave();
  t.is(barrier.enter(), null);
});

test('the deadline opens the gate and says so; dispose ends a freeze at unmount', async (t) => {
  const { barrier, events, freeze } = parts();
  await freeze.freeze(100);
  const held = barrier.enter();
  t.not(held, null);
  await held;
  t.is(barrier.enter(), null, 'open after the deadline');
  barrier.leave();
  await freeze.freeze(10_000);
  freeze.dispose();
  t.is(barrier.enter(), null);
  barrier.leave();
  t.deepEqual(types(events), ['frozen', 'thawed:deadline', 'frozen', 'thawed:thaw']);
  for (const bad of [0, -1, 60_001, 1.5, Number.NaN]) await t.throwsAsync(freeze.freeze(bad), { message: /1\.\.60000/ });
});

test('tokens: a thaw ends only the freeze it names; a stale one is ESTALE and changes nothing', async (t) => {
  const { barrier, events, freeze } = parts();
  const code = (fn: () => void): string | null => {
    try {
      fn();
      return null;
    } catch (err) {
      return (err as BlksnapError).code;
    }
  };
  // A's freeze runs out; B freezes; A's late thaw must not end B's freeze.
  await freeze.freeze(50, 'caller-A');
  const held = barrier.enter();
  t.not(held, null, 'frozen');
  await held;
  t.is(freeze.frozenUntil, null, "A's freeze ran out");
  await freeze.freeze(60_000, 'caller-B');
  t.is(code(() => freeze.thaw('caller-A')), 'ESTALE', "A's thaw names no current freeze");
  t.not(freeze.frozenUntil, null, 'B is still frozen');
  t.not(barrier.enter(), null, 'writes are still held');
  t.is(code(() => freeze.thaw()), 'ESTALE', 'a plain thaw does not end a freeze made with a token');
  t.not(freeze.frozenUntil, null);
  await t.throwsAsync(freeze.freeze(1000, 'caller-C'), { message: /already frozen/ }, 'a second freeze is EBUSY');
  t.is(code(() => freeze.thaw('bad/token')), 'EINVAL');
  t.is(code(() => freeze.thaw('caller-B')), null, 'B thaws its own');
  t.is(freeze.frozenUntil, null);
  t.is(code(() => freeze.thaw('caller-B')), 'ESTALE', 'thawing it again: it is gone');
  t.is(code(() => freeze.thaw()), 'EINVAL', 'a plain thaw with nothing frozen');

  // Without tokens, as before; a tokened thaw cannot end a freeze made without one.
  await freeze.freeze(60_000);
  t.is(code(() => freeze.thaw('caller-A')), 'ESTALE');
  t.not(freeze.frozenUntil, null);
  t.is(code(() => freeze.thaw()), null);

  // A freeze still draining is ended by its own token (it then fails with EINTR), not by another.
  t.is(barrier.enter(), null, 'a write in flight');
  const draining = freeze.freeze(60_000, 'slow');
  t.is(code(() => freeze.thaw('other')), 'ESTALE');
  t.is(code(() => freeze.thaw('slow')), null);
  t.is(((await t.throwsAsync(draining)) as BlksnapError).code, 'EINTR');
  barrier.leave();
  for (const bad of ['', 'a b', 'x'.repeat(65), 'é', 'a/b']) {
    await t.throwsAsync(freeze.freeze(1000, bad), { message: /token/ }, JSON.stringify(bad));
  }
  t.is(freeze.frozenUntil, null, 'bad tokens froze nothing');
  t.is(barrier.enter(), null);
  barrier.leave();
  t.deepEqual(types(events), ['frozen', 'thawed:deadline', 'frozen', 'thawed:thaw', 'frozen', 'thawed:thaw']);
});
