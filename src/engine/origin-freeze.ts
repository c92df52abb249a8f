/**
 * /control `freeze MS [TOKEN]` and `thaw [TOKEN]`: hold the origin's write gate for a
 * caller that wants a point in time across several mounts (freeze all -> mkdir in each
 * -> thaw all).
 *
 * Life of one freeze:
 *
 *   (none) --freeze--> draining --writes in flight left--> frozen --thaw | deadline--> (none)
 *                         |                                             (event `thawed`)
 *                         +--thaw | deadline--> (none): the freeze command fails
 *
 * The deadline runs from the moment the command arrives, whatever becomes of the
 * caller (killed, hung, gone), so the origin can never stay frozen longer than MS. A
 * second freeze while one holds is EBUSY rather than an extension.
 *
 * Whose freeze a thaw ends. Caller A's freeze can run out (writes resume), caller B can
 * freeze next, and A's late `thaw` must not end B's freeze: A would believe its cut was
 * held, and B's cut would silently not be. So a freeze may carry a TOKEN, and:
 * - a freeze made with a TOKEN is ended only by `thaw TOKEN`;
 * - `thaw TOKEN` when no current freeze (draining or frozen) carries that TOKEN fails
 *   with ESTALE and changes nothing: the caller's freeze ran out, or never was;
 * - a plain `thaw` while a freeze made with a TOKEN holds is ESTALE too, and changes
 *   nothing;
 * - a plain `thaw` with nothing frozen is EINVAL (as `fsfreeze -u` is). Between two
 *   callers that both use no token, nothing can tell one freeze from the other: use
 *   tokens.
 */
import { BlksnapError } from '../errors.js';
import type { EventQueue } from './event-queue.js';
import type { Logger } from './logger.js';
import type { WriteBarrier } from './write-barrier.js';

/** The longest freeze a caller may ask for. */
export const MAX_FREEZE_MS = 60_000;

/** What a freeze's TOKEN may be (the interface contract). */
export const FREEZE_TOKEN = /^[A-Za-z0-9._-]{1,64}$/;

export type ThawReason = 'thaw' | 'deadline';

interface Hold {
  /** The caller's name for this freeze (null: made without one). */
  token: string | null;
  release: () => void;
  /** Resolves the freeze's `ended` promise, so a freeze still draining stops waiting at once. */
  signalEnded: () => void;
  timer: NodeJS.Timeout;
  until: Date;
  /** Draining until the writes in flight have left; frozen after (the `frozen` event went out). */
  frozen: boolean;
  /** Set when the hold ended before it was frozen: why. */
  endedBy: ThawReason | null;
}

export class OriginFreeze {
  private hold: Hold | null = null;

  constructor(
    private readonly barrier: WriteBarrier,
    private readonly events: EventQueue,
    private readonly log: Logger,
  ) {}

  /** When the current freeze ends by itself, or null when the origin is not frozen (or still draining). */
  get frozenUntil(): Date | null {
    return this.hold?.frozen === true ? this.hold.until : null;
  }

  /**
   * Close the gate, wait for the writes in flight, then return with the origin frozen for
   * at most `ms`. With a `token`, only `thaw(token)` ends it early.
   */
  async freeze(ms: number, token: string | null = null): Promise<void> {
    if (!Number.isSafeInteger(ms) || ms < 1 || ms > MAX_FREEZE_MS) {
      throw BlksnapError.of('EINVAL', `freeze needs 1..${MAX_FREEZE_MS} milliseconds, not ${ms}`);
    }
    if (token !== null && !FREEZE_TOKEN.test(token)) throw BlksnapError.of('EINVAL', 'a freeze token is 1-64 of A-Z a-z 0-9 . _ -');
    if (this.hold !== null) throw BlksnapError.of('EBUSY', 'the origin is already frozen (thaw it first)');
    let signalEnded!: () => void;
    const ended = new Promise<void>((resolve) => (signalEnded = resolve));
    const hold: Hold = {
      token,
      release: this.barrier.hold(),
      signalEnded,
      timer: setTimeout(() => this.end(hold, 'deadline'), ms),
      until: new Date(Date.now() + ms),
      frozen: false,
      endedBy: null,
    };
    this.hold = hold;
    await Promise.race([this.barrier.drained(), ended]);
    if (hold.endedBy === 'deadline') throw BlksnapError.of('ETIMEDOUT', `the writes in flight did not finish within ${ms} ms; the origin was not frozen`);
    if (hold.endedBy === 'thaw') throw BlksnapError.of('EINTR', 'thawed before the writes in flight finished; the origin was not frozen');
    hold.frozen = true;
    this.log.info({ timeout_ms: ms, until: hold.until.toISOString() }, 'origin frozen');
    this.events.emit('frozen', { timeout_ms: ms });
  }

  /** End the current freeze; see the header for which thaw may end which freeze. Checks everything before changing anything. */
  thaw(token: string | null = null): void {
    const hold = this.hold;
    if (token !== null) {
      if (!FREEZE_TOKEN.test(token)) throw BlksnapError.of('EINVAL', 'a freeze token is 1-64 of A-Z a-z 0-9 . _ -');
      if (hold === null || hold.token !== token) throw BlksnapError.of('ESTALE', `no current freeze is named ${token}: it ran out, or the freeze now held is another's`);
    } else {
      if (hold === null) throw BlksnapError.of('EINVAL', 'the origin is not frozen');
      if (hold.token !== null) throw BlksnapError.of('ESTALE', 'the current freeze was made with a token: only a thaw naming it ends it');
    }
    this.end(hold, 'thaw');
  }

  /** Open the gate at unmount, whatever holds it (this also clears the deadline's timer). */
  dispose(): void {
    if (this.hold !== null) this.end(this.hold, 'thaw');
  }

  private end(hold: Hold, reason: ThawReason): void {
    if (this.hold !== hold) return;
    this.hold = null;
    clearTimeout(hold.timer);
    hold.release();
    hold.signalEnded();
    if (!hold.frozen) {
      hold.endedBy = reason;
      return;
    }
    this.log.info({ reason }, 'origin thawed');
    this.events.emit('thawed', { reason });
  }
}
