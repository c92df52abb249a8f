/**
 * Which requests the fault file system fails or holds back, and how: a list of rules,
 * each for one file and one kind of request, checked before the request touches the
 * backing file. A failed request changes nothing (no partial write), so what the
 * backing file holds is exactly what the requests that succeeded wrote.
 */

export type FaultOp = 'read' | 'write' | 'fallocate';
export type FaultErrno = 'EIO' | 'ENOSPC';

export interface FaultRule {
  /** The file, as a path inside the fault file system ("disk.img" or "/dir/disk.diff"). */
  file: string;
  op: FaultOp;
  /** Fail the request with this errno (without it, the rule only delays). */
  errno?: FaultErrno;
  /** Answer the request (success or failure) only after this many milliseconds. */
  delayMs?: number;
  /** Fail only requests that overlap [from, to) (bytes); both default to the whole file. */
  from?: number;
  to?: number;
  /**
   * Let this many more bytes of matching requests through first (counted from when the
   * rule is set); the request that would pass the budget is the first the rule acts on,
   * and it acts on every later one too. Default 0: at once.
   */
  afterBytes?: number;
}

/** What to do with one request. */
export interface Verdict {
  errno: FaultErrno | null;
  delayMs: number;
}

interface ActiveRule {
  rule: FaultRule;
  file: string;
  budget: number;
}

function normalise(file: string): string {
  return file.startsWith('/') ? file : `/${file}`;
}

export class FaultRules {
  private rules: ActiveRule[] = [];
  private total = 0;

  add(rule: FaultRule): void {
    this.rules.push({ rule, file: normalise(rule.file), budget: rule.afterBytes ?? 0 });
  }

  /** Remove every rule (or those of one file): later requests succeed again. */
  heal(file?: string): void {
    this.rules = file === undefined ? [] : this.rules.filter((r) => r.file !== normalise(file));
  }

  /** Requests failed or delayed since start, including those of rules healed since. */
  get fired(): number {
    return this.total;
  }

  /**
   * What to do with a request of `length` bytes at `offset`: the errno it fails with
   * (null: it goes ahead) and how long to hold it first. A request a rule lets through
   * is charged to that rule's byte budget.
   */
  check(file: string, op: FaultOp, offset: number, length: number): Verdict {
    const matching = this.rules.filter((r) => r.file === file && r.rule.op === op &&
      offset < (r.rule.to ?? Infinity) && offset + length > (r.rule.from ?? 0));
    const acting = matching.filter((r) => length > r.budget);
    for (const r of acting) r.budget = 0; // once past its budget, a rule acts on everything it matches
    this.total += acting.length;
    const errno = acting.map((r) => r.rule.errno).find((e) => e !== undefined) ?? null;
    // Only bytes that really went through count against the others' budgets.
    if (errno === null) for (const r of matching) if (!acting.includes(r)) r.budget -= length;
    return { errno, delayMs: Math.max(0, ...acting.map((r) => r.rule.delayMs ?? 0)) };
  }
}
