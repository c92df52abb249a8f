/**
 * What the bench measured: rows of one workload in one state, with a cell per system
 * (the raw file, blksnapfs, qemu-storage-daemon). A cell keeps every run and reports
 * their median, or says why the system could not be measured ("n/a: reason").
 */
import { median } from './tools.js';

export type System = 'raw' | 'blksnapfs' | 'qsd';
export const SYSTEMS: readonly System[] = ['raw', 'blksnapfs', 'qsd'];
export type Unit = 'MiB/s' | 'IOPS' | 'ms' | 'MiB' | 'B';

export interface Cell {
  runs: number[];
  median: number | null;
  na: string | null;
}

export interface Row {
  id: string;
  section: string;
  workload: string;
  tool: string;
  state: string;
  unit: Unit;
  cells: Partial<Record<System, Cell>>;
  /** Facts that go with the row (block counts, chunk sizes, ...). */
  facts: Record<string, number | string>;
}

export interface RowSpec {
  section: string;
  workload: string;
  tool: string;
  state: string;
  unit: Unit;
}

export class Recorder {
  readonly rows: Row[] = [];
  private readonly byId = new Map<string, Row>();

  row(id: string, spec: RowSpec): Row {
    let r = this.byId.get(id);
    if (r === undefined) {
      r = { id, ...spec, cells: {}, facts: {} };
      this.byId.set(id, r);
      this.rows.push(r);
    }
    return r;
  }

  private cell(id: string, system: System): Cell {
    const r = this.byId.get(id);
    if (r === undefined) throw new Error(`bench: row ${id} was never defined`);
    let c = r.cells[system];
    if (c === undefined) {
      c = { runs: [], median: null, na: null };
      r.cells[system] = c;
    }
    return c;
  }

  add(id: string, system: System, value: number): void {
    const c = this.cell(id, system);
    c.runs.push(value);
    c.median = median(c.runs);
  }

  na(id: string, system: System, reason: string): void {
    this.cell(id, system).na ??= reason;
  }

  fact(id: string, key: string, value: number | string): void {
    const r = this.byId.get(id);
    if (r !== undefined) r.facts[key] = value;
  }

  get(id: string, system: System): number | null {
    const c = this.byId.get(id)?.cells[system];
    return c === undefined || c.runs.length === 0 ? null : c.median;
  }

  getRow(id: string): Row | undefined {
    return this.byId.get(id);
  }
}
