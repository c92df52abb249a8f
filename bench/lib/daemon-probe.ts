/**
 * What a blksnapfs daemon does while a tool runs: requests received and requests in
 * flight (its /status, polled every few milliseconds) and the CPU it burns
 * (/proc/PID/stat). This is the evidence behind a miss: a transport that keeps one
 * request in flight, or a daemon that spends its CPU per request.
 */
import { promises as fsp } from 'node:fs';
import type { Blksnapfs } from './blksnapfs.js';
import type { DaemonSample } from './results.js';
import { run, sleep } from './proc.js';

const POLL_MS = 20;

let ticksPerSecond: number | null = null;

async function clockTicks(): Promise<number> {
  if (ticksPerSecond === null) {
    const r = await run('getconf', ['CLK_TCK']);
    const n = Number(r.stdout.trim());
    ticksPerSecond = r.code === 0 && n > 0 ? n : 100;
  }
  return ticksPerSecond;
}

/** utime + stime of a process (all its threads), or of one of its threads, in seconds. */
async function cpuSeconds(pid: number, tid?: number): Promise<number> {
  const text = await fsp.readFile(tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`, 'utf8');
  // The command name may hold spaces and parentheses: fields count from the last ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // After the name: state is field 3, utime field 14, stime field 15 (1-based, man 5 proc).
  return (Number(fields[11]) + Number(fields[12])) / (await clockTicks());
}

export class DaemonProbe {
  private stopped = false;
  private samples = 0;
  private sum = 0;
  private max = 0;
  private loop: Promise<void> = Promise.resolve();

  private polls = 0;

  private constructor(
    private readonly b: Blksnapfs,
    private readonly started: number,
    private readonly cpu0: number,
    private readonly jsCpu0: number,
    private readonly requests0: number,
    /** Requests one read of /status costs (open, read, flush, release...). */
    private readonly perPoll: number,
  ) {}

  static async start(b: Blksnapfs): Promise<DaemonProbe> {
    const a = (await b.status()).transport?.requests ?? 0;
    const requests0 = (await b.status()).transport?.requests ?? 0;
    const cpu0 = await cpuSeconds(b.pid);
    const jsCpu0 = await cpuSeconds(b.pid, b.pid);
    const p = new DaemonProbe(b, Date.now(), cpu0, jsCpu0, requests0, requests0 - a);
    p.loop = p.poll();
    return p;
  }

  private async poll(): Promise<void> {
    while (!this.stopped) {
      const st = await this.b.status().catch(() => null);
      this.polls++;
      if (st?.transport !== undefined && st !== null) {
        // The read of /status is itself a request in flight.
        const n = Math.max(0, st.transport.in_flight - 1);
        this.samples++;
        this.sum += n;
        if (n > this.max) this.max = n;
      }
      await sleep(POLL_MS);
    }
  }

  async stop(): Promise<DaemonSample> {
    this.stopped = true;
    await this.loop;
    const seconds = (Date.now() - this.started) / 1000;
    const cpu = (await cpuSeconds(this.b.pid)) - this.cpu0;
    // The main thread runs JavaScript (and libuv's loop); the others are the FUSE
    // reader and reply threads, libuv's pool (file I/O) and V8's helpers.
    const jsCpu = (await cpuSeconds(this.b.pid, this.b.pid)) - this.jsCpu0;
    // The last read of /status counts as one more poll.
    const all = ((await this.b.status()).transport?.requests ?? 0) - this.requests0;
    const requests = Math.max(1, all - (this.polls + 1) * this.perPoll);
    return {
      requests,
      meanInFlight: this.samples === 0 ? 0 : this.sum / this.samples,
      maxInFlight: this.max,
      cpuPercent: seconds > 0 ? (cpu / seconds) * 100 : 0,
      jsCpuPercent: seconds > 0 ? (jsCpu / seconds) * 100 : 0,
      cpuUsPerRequest: (cpu * 1e6) / requests,
    };
  }
}
