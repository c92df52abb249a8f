/**
 * A small QMP (QEMU Machine Protocol) client over a unix socket: the greeting, capability
 * negotiation, commands with ids, and events kept for whoever waits for them.
 *
 *     const qmp = await QmpClient.connect('/run/qsd.sock');
 *     await qmp.execute('blockdev-add', { driver: 'file', 'node-name': 'f', filename: '/x.img' });
 */
import { createConnection, type Socket } from 'node:net';
import { sleep } from './proc.js';

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

export interface QmpEvent {
  event: string;
  data: JsonObject;
}

interface Pending {
  resolve: (value: Json) => void;
  reject: (err: Error) => void;
  command: string;
}

export class QmpError extends Error {
  constructor(readonly command: string, readonly errorClass: string, desc: string) {
    super(`QMP ${command}: ${errorClass}: ${desc}`);
  }
}

function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export class QmpClient {
  private readonly pending = new Map<string, Pending>();
  private readonly events: QmpEvent[] = [];
  private readonly eventWaiters: Array<() => void> = [];
  private nextId = 1;
  private buffered = '';
  private closedError: Error | null = null;

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    const fail = (err: Error): void => {
      this.closedError ??= err;
      for (const p of this.pending.values()) p.reject(new Error(`QMP ${p.command}: ${err.message}`));
      this.pending.clear();
      for (const wake of this.eventWaiters.splice(0)) wake();
    };
    socket.on('error', fail);
    socket.on('close', () => fail(new Error('connection closed')));
  }

  /** Connect (retrying while the daemon creates its socket), read the greeting, negotiate. */
  static async connect(path: string, timeoutMs = 10_000): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const socket = await new Promise<Socket>((resolve, reject) => {
          const s = createConnection(path);
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        });
        const client = new QmpClient(socket);
        await client.greeting();
        await client.execute('qmp_capabilities');
        return client;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`cannot connect to QMP at ${path}: ${err instanceof Error ? err.message : String(err)}`);
        await sleep(50);
      }
    }
  }

  private greetingResolve: ((v: JsonObject) => void) | null = null;

  private greeting(): Promise<JsonObject> {
    return new Promise((resolve, reject) => {
      this.greetingResolve = resolve;
      setTimeout(() => reject(new Error('no QMP greeting')), 5000);
    });
  }

  private onData(chunk: string): void {
    this.buffered += chunk;
    for (let nl = this.buffered.indexOf('\n'); nl >= 0; nl = this.buffered.indexOf('\n')) {
      const line = this.buffered.slice(0, nl).trim();
      this.buffered = this.buffered.slice(nl + 1);
      if (line.length === 0) continue;
      const msg: unknown = JSON.parse(line);
      if (!isObject(msg)) continue;
      this.dispatch(msg);
    }
  }

  private dispatch(msg: JsonObject): void {
    if ('QMP' in msg) {
      this.greetingResolve?.(msg);
      this.greetingResolve = null;
      return;
    }
    if (typeof msg['event'] === 'string') {
      this.events.push({ event: msg['event'], data: isObject(msg['data']) ? msg['data'] : {} });
      for (const wake of this.eventWaiters.splice(0)) wake();
      return;
    }
    const id = typeof msg['id'] === 'string' ? msg['id'] : undefined;
    const pending = id === undefined ? undefined : this.pending.get(id);
    if (pending === undefined || id === undefined) return;
    this.pending.delete(id);
    const error = msg['error'];
    if (isObject(error)) {
      pending.reject(new QmpError(pending.command, String(error['class']), String(error['desc'])));
    } else {
      pending.resolve(msg['return'] ?? null);
    }
  }

  /** Run one command; resolves with its `return` value, rejects with a QmpError. */
  execute(command: string, args?: JsonObject): Promise<Json> {
    if (this.closedError !== null) return Promise.reject(new Error(`QMP ${command}: ${this.closedError.message}`));
    const id = `b${this.nextId++}`;
    const msg: JsonObject = { execute: command, id };
    if (args !== undefined) msg['arguments'] = args;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, command });
      this.socket.write(`${JSON.stringify(msg)}\n`);
    });
  }

  /** Wait for (and consume) the first event named `name` whose data satisfies `match`. */
  async waitEvent(name: string, match: (data: JsonObject) => boolean, timeoutMs = 30_000): Promise<QmpEvent> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.events.findIndex((e) => e.event === name && match(e.data));
      if (i >= 0) {
        const [event] = this.events.splice(i, 1);
        if (event !== undefined) return event;
      }
      if (this.closedError !== null) throw new Error(`waiting for ${name}: ${this.closedError.message}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for QMP event ${name}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.eventWaiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Run a job-creating command and wait until the job concludes; throws the job's error. */
  async runJob(command: string, jobId: string, args: JsonObject, timeoutMs = 60_000): Promise<void> {
    await this.execute(command, { ...args, 'job-id': jobId });
    await this.waitEvent('JOB_STATUS_CHANGE', (d) => d['id'] === jobId && d['status'] === 'concluded', timeoutMs);
    const jobs = await this.execute('query-jobs');
    const job = Array.isArray(jobs) ? jobs.find((j) => isObject(j) && j['id'] === jobId) : undefined;
    await this.execute('job-dismiss', { id: jobId });
    if (isObject(job) && typeof job['error'] === 'string') throw new Error(`QMP job ${jobId} failed: ${job['error']}`);
  }

  close(): void {
    this.socket.destroy();
  }
}
