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

/** utime + stime of a process, in seconds. */
async function cpuSeconds(pid: number): Promise<number> {
  const text = await fsp.readFile(`/proc/${pid}/stat`, 'utf8');
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

  private constructor(
    private readonly b: Blksnapfs,
    private readonly started: number,
    private readonly cpu0: number,
    private readonly requests0: number,
  ) {}

  static async start(b: Blksnapfs): Promise<DaemonProbe> {
    const cpu0 = await cpuSeconds(b.pid);
    const st = await b.status();
    const p = new DaemonProbe(b, Date.now(), cpu0, st.transport?.requests ?? 0);
    p.loop = p.poll();
    return p;
  }

  private async poll(): Promise<void> {
    while (!this.stopped) {
      const st = await this.b.status().catch(() => null);
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
    const requests = ((await this.b.status()).transport?.requests ?? 0) - this.requests0;
    return {
      requests,
      meanInFlight: this.samples === 0 ? 0 : this.sum / this.samples,
      maxInFlight: this.max,
      cpuPercent: seconds > 0 ? (cpu / seconds) * 100 : 0,
      cpuUsPerRequest: requests > 0 ? (cpu * 1e6) / requests : 0,
    };
  }
}
