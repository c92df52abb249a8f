/**
 * Which requests the fault file system fails, and with what: a list of rules, each
 * for one file and one kind of request, checked before the request touches the
 * backing file. A failed request changes nothing (no partial write), so what the
 * backing file holds is exactly what the requests that succeeded wrote.
 */

export type FaultOp = 'read' | 'write' | 'fallocate';
export type FaultErrno = 'EIO' | 'ENOSPC';

export interface FaultRule {
  /** The file, as a path inside the fault file system ("disk.img" or "/dir/disk.diff"). */
  file: string;
  op: FaultOp;
  errno: FaultErrno;
  /** Fail only requests that overlap [from, to) (bytes); both default to the whole file. */
  from?: number;
  to?: number;
  /**
   * Let this many more bytes of matching requests through first (counted from when the
   * rule is set); the request that would pass the budget fails, and so does every later
   * one. Default 0: fail at once.
   */
  afterBytes?: number;
}

interface ActiveRule {
  rule: FaultRule;
  file: string;
  budget: number;
  hits: number;
}

function normalise(file: string): string {
  return file.startsWith('/') ? file : `/${file}`;
}

export class FaultRules {
  private rules: ActiveRule[] = [];
  /** Failures injected since start, including those of rules healed since. */
  private total = 0;

  add(rule: FaultRule): void {
    this.rules.push({ rule, file: normalise(rule.file), budget: rule.afterBytes ?? 0, hits: 0 });
  }

  /** Remove every rule (or those of one file): later requests succeed again. */
  heal(file?: string): void {
    this.rules = file === undefined ? [] : this.rules.filter((r) => r.file !== normalise(file));
  }

  get failures(): number {
    return this.total;
  }

  /**
   * The errno a request of `length` bytes at `offset` must fail with, or null to let it
   * through. A request let through is charged to every byte budget it matches.
   */
  check(file: string, op: FaultOp, offset: number, length: number): FaultErrno | null {
    const matching = this.rules.filter((r) => r.file === file && r.rule.op === op &&
      offset < (r.rule.to ?? Infinity) && offset + length > (r.rule.from ?? 0));
    const failing = matching.find((r) => length > r.budget);
    if (failing !== undefined) {
      failing.budget = 0; // once past its budget, a rule fails everything it matches
      failing.hits++;
      this.total++;
      return failing.rule.errno;
    }
    for (const r of matching) r.budget -= length;
    return null;
  }
}
