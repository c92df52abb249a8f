/**
 * What the bench measured: rows of one workload in one state, with a cell per system
 * (the raw file, blksnapfs on each FUSE transport, qemu-storage-daemon). A cell keeps
 * every run and reports their median, or says why the system could not be measured
 * ("n/a: reason"). A blksnapfs cell also keeps what the daemon did during each run
 * (requests, requests in flight, CPU): the evidence of what limits it.
 */
import type { TransportName } from '../../src/fuse/transport.js';
import { median } from './tools.js';

/**
 * blksnapfs is the default: libfuse3 with the native fast path; blksnapfs-off the same
 * transport with fast_path=off (every request through the engine); blksnapfs-fn on
 * fuse-native (which has no fast path).
 */
export type System = 'raw' | 'blksnapfs' | 'blksnapfs-off' | 'blksnapfs-fn' | 'qsd';
export const SYSTEMS: readonly System[] = ['raw', 'blksnapfs', 'blksnapfs-off', 'blksnapfs-fn', 'qsd'];
export type BsfSystem = 'blksnapfs' | 'blksnapfs-off' | 'blksnapfs-fn';
export const BSF_SYSTEMS: readonly BsfSystem[] = ['blksnapfs', 'blksnapfs-off', 'blksnapfs-fn'];

/** How a blksnapfs system is mounted. */
export interface BsfVariant {
  transport: TransportName;
  fastPath: boolean;
}

export function variantOf(system: BsfSystem): BsfVariant {
  switch (system) {
    case 'blksnapfs': return { transport: 'libfuse3', fastPath: true };
    case 'blksnapfs-off': return { transport: 'libfuse3', fastPath: false };
    case 'blksnapfs-fn': return { transport: 'fuse-native', fastPath: false };
  }
}

export function systemLabel(system: System): string {
  switch (system) {
    case 'raw': return 'raw file';
    case 'blksnapfs': return 'blksnapfs';
    case 'blksnapfs-off': return 'blksnapfs fast_path=off';
    case 'blksnapfs-fn': return 'blksnapfs fuse-native';
    case 'qsd': return 'qsd';
  }
}

/** What the daemon did during one measurement (from /status and /proc/PID/stat). */
export interface DaemonSample {
  /** FUSE requests of the tool during the measurement (those of the /status polls taken off). */
  requests: number;
  /** Requests in flight, sampled every few ms while the tool ran (the poll itself not counted). */
  meanInFlight: number;
  maxInFlight: number;
  /** Daemon CPU time (user + system, all threads) over wall time, in % of one CPU. */
  cpuPercent: number;
  /** The same for the main thread alone: JavaScript and the event loop. */
  jsCpuPercent: number;
  /** Daemon CPU time (all threads, the polls' share included) per request of the tool, µs. */
  cpuUsPerRequest: number;
}
export type Unit = 'MiB/s' | 'IOPS' | 'ms' | 'MiB' | 'B';

export interface Cell {
  runs: number[];
  median: number | null;
  na: string | null;
  /** blksnapfs cells: one sample per run. */
  daemon?: DaemonSample[];
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

  /** The rows of a saved run (bench/results/*.json), to judge and render them again. */
  static fromRows(rows: readonly Row[]): Recorder {
    const rec = new Recorder();
    for (const r of rows) {
      rec.rows.push(r);
      rec.byId.set(r.id, r);
    }
    return rec;
  }

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

  daemon(id: string, system: System, sample: DaemonSample): void {
    const c = this.cell(id, system);
    (c.daemon ??= []).push(sample);
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
