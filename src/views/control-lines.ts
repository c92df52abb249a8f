/**
 * Lines of one open /control file, assembled across write() calls. A program may cut
 * its output anywhere (`cat` writes 128 KiB at a time, a shell may write a command in
 * two pieces): a line is complete only when its newline arrives, or at close for a
 * last line without one, and only complete lines come out of here.
 *
 * A line longer than MAX_LINE_BYTES comes out once, as `too-long`, as soon as it is
 * known to be too long; the rest of it, up to its newline, is dropped. After a write
 * fails, `abandonCurrentLine` drops the rest of the line that write left unfinished the
 * same way, so a later write never completes the tail of a refused line into a command.
 */

/** The longest line, in bytes, without its newline. */
export const MAX_LINE_BYTES = 4096;

export type CompletedLine = { kind: 'line'; bytes: Buffer } | { kind: 'too-long' };

export class LineAssembler {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** Inside a line that was refused: its bytes are dropped up to its newline. */
  private skipping = false;

  /** Take one write's bytes; return the lines it completed, in order. */
  push(data: Buffer): CompletedLine[] {
    const done: CompletedLine[] = [];
    let start = 0;
    while (start < data.length) {
      const nl = data.indexOf(0x0a, start);
      const end = nl < 0 ? data.length : nl;
      this.take(data.subarray(start, end), done);
      if (nl < 0) break;
      if (!this.skipping) done.push({ kind: 'line', bytes: this.drain() });
      this.skipping = false;
      start = nl + 1;
    }
    return done;
  }

  /** At close: the last line, if it had no newline. */
  finish(): CompletedLine | null {
    const skipping = this.skipping;
    this.skipping = false;
    if (skipping || this.pendingBytes === 0) {
      this.drain();
      return null;
    }
    return { kind: 'line', bytes: this.drain() };
  }

  /** Drop the unfinished line, and whatever of it is still to come, up to its newline. */
  abandonCurrentLine(): void {
    if (this.pendingBytes > 0) this.skipping = true;
    this.drain();
  }

  /** True while part of a line is held, waiting for its newline. */
  get holdsPartialLine(): boolean {
    return this.pendingBytes > 0;
  }

  private take(piece: Buffer, done: CompletedLine[]): void {
    if (this.skipping || piece.length === 0) return;
    if (this.pendingBytes + piece.length > MAX_LINE_BYTES) {
      this.drain();
      this.skipping = true;
      done.push({ kind: 'too-long' });
      return;
    }
    // A copy: the caller's buffer belongs to the request and is reused after it.
    this.pending.push(Buffer.from(piece));
    this.pendingBytes += piece.length;
  }

  private drain(): Buffer {
    const line = Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    return line;
  }
}
