/**
 * The peer: qemu-storage-daemon doing QEMU's classic image fleecing.
 *
 *   export "oexp" (FUSE, writable, on a regular file)  ->  raw node "origin"
 *        -> [cbwN -> ... -> cbw1] (copy-before-write filters, inserted live)
 *        -> file node "ofile" (the origin image, host page cache like blksnapfs)
 *
 * A snapshot ("fleece") is a temporary qcow2 (cluster_size = the chunk size, opened
 * O_DIRECT like blksnapfs's difference storage) whose backing is "ofile": clusters the
 * filter has copied are read from the qcow2, the rest from the origin file below the
 * filter. It is exported read-only through a second FUSE export. The snapshot-access
 * driver is deliberately not used (7.2 serves new data for reads that span copied and
 * uncopied clusters).
 *
 * Known 7.2 limitation, measured: any blockdev-reopen of "origin" while its child is a
 * copy-before-write filter aborts the daemon (block/io.c:64,
 * bdrv_parent_drained_end_single_no_poll: Assertion `c->parent_quiesce_counter > 0'),
 * and the filter itself refuses to reopen its file; adding a second filter over the first
 * fails with a permission conflict on "ofile". So a filter can be neither removed nor
 * stacked live: a fresh snapshot means a fresh daemon (`restart()`), and several
 * snapshots held at once are built into the daemon's command line (`restart(chain)`).
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { QmpClient } from './qmp.js';
import { alive, run, stopping, StoppingError, waitExit, vmHWMKiB } from './proc.js';
import type { Cleanup } from './cleanup.js';

export interface QsdOptions {
  dir: string;
  origin: string;
  originSize: number;
  clusterSize: number;
}

export interface Fleece {
  name: string;
  image: string;
  /** Wall-clock time of the QMP sequence that created and inserted it, in ms. */
  takeMs: number;
}

let instanceSeq = 0;

export class Qsd {
  readonly originExport: string;
  private qmp: QmpClient | null = null;
  private pidValue = 0;
  private top = 'ofile';
  private readonly fleeces: Fleece[] = [];
  private readonly mountpoints: string[] = [];
  private readonly tag: string;
  private undo: (() => Promise<void>) | null = null;

  private constructor(private readonly opts: QsdOptions, private readonly cleanup: Cleanup) {
    this.tag = `q${++instanceSeq}`;
    this.originExport = join(opts.dir, `${this.tag}-origin`);
  }

  static async start(opts: QsdOptions, cleanup: Cleanup): Promise<Qsd> {
    const q = new Qsd(opts, cleanup);
    await q.launch();
    return q;
  }

  get pid(): number {
    return this.pidValue;
  }

  /** Spawn a daemon with these extra arguments and connect to its QMP socket. */
  private async spawnDaemon(name: string, extra: readonly string[]): Promise<{ qmp: QmpClient; pid: number; undo: () => Promise<void> }> {
    if (stopping.now) throw new StoppingError();
    const sock = join(this.opts.dir, `${this.tag}.${name}.qmp`);
    const log = join(this.opts.dir, `${this.tag}.log`);
    const logFd = openSync(log, 'a');
    const child = spawn('qemu-storage-daemon', [
      '--chardev', `socket,path=${sock},server=on,wait=off,id=qmp0`,
      '--monitor', 'chardev=qmp0',
      ...extra,
    ], { detached: true, stdio: ['ignore', logFd, logFd] });
    closeSync(logFd);
    if (child.pid === undefined) throw new Error('cannot start qemu-storage-daemon');
    const pid = child.pid;
    child.unref();
    let qmp: QmpClient | null = null;
    const undo = this.cleanup.add(`qemu-storage-daemon ${pid}`, async () => {
      if (qmp !== null) {
        await qmp.execute('quit').catch(() => undefined);
        qmp.close();
      }
      if (!(await waitExit(pid, 10_000)) && alive(pid)) {
        process.kill(pid, 'SIGKILL');
        await waitExit(pid, 5000);
      }
    });
    try {
      qmp = await QmpClient.connect(sock);
      await qmp.execute('query-block-exports');
    } catch (err) {
      await undo();
      const text = await fsp.readFile(log, 'utf8').catch(() => '');
      throw new Error(`qemu-storage-daemon did not start: ${err instanceof Error ? err.message : String(err)} ${text.trim().split('\n').slice(-2).join(' ')}`);
    }
    return { qmp, pid, undo };
  }

  private qcow2Path(name: string): string {
    return join(this.opts.dir, `${this.tag}-${name}.qcow2`);
  }

  /** Create an empty qcow2 (cluster_size = chunk) through QMP's blockdev-create (qemu-img is not installed). */
  private async createQcow2(qmp: QmpClient, name: string): Promise<void> {
    await fsp.writeFile(this.qcow2Path(name), '');
    await qmp.execute('blockdev-add', { driver: 'file', 'node-name': `${name}-file`, filename: this.qcow2Path(name), cache: { direct: true } });
    await qmp.runJob('blockdev-create', `create-${name}`, {
      options: { driver: 'qcow2', file: `${name}-file`, size: this.opts.originSize, 'cluster-size': this.opts.clusterSize },
    });
  }

  /**
   * Start the daemon. With `chain`, the snapshots exist from the start: filters
   * cbwN -> ... -> cbw1 -> ofile are on the command line (their qcow2s made first by a
   * helper daemon), which is the only way 7.2 holds several at once (see above).
   */
  private async launch(chain: readonly string[] = []): Promise<void> {
    if (chain.length > 0) {
      const helper = await this.spawnDaemon('create', []);
      for (const name of chain) await this.createQcow2(helper.qmp, name);
      await helper.undo();
    }
    const args = [
      '--blockdev', `driver=file,node-name=ofile,filename=${this.opts.origin},cache.direct=off`,
    ];
    let top = 'ofile';
    for (const name of chain) {
      args.push(
        '--blockdev', `driver=file,node-name=${name}-file,filename=${this.qcow2Path(name)},cache.direct=on`,
        '--blockdev', `driver=qcow2,node-name=${name}-fl,file=${name}-file,backing=ofile`,
        '--blockdev', `driver=copy-before-write,node-name=${name}-cbw,file=${top},target=${name}-fl`,
      );
      top = `${name}-cbw`;
    }
    await fsp.writeFile(this.originExport, '');
    this.mountpoints.push(this.originExport);
    args.push(
      '--blockdev', `driver=raw,node-name=origin,file=${top}`,
      '--export', `type=fuse,id=oexp,node-name=origin,mountpoint=${this.originExport},writable=on`,
    );
    for (const name of chain) {
      const image = join(this.opts.dir, `${this.tag}-${name}.img`);
      await fsp.writeFile(image, '');
      this.mountpoints.push(image);
      args.push('--export', `type=fuse,id=${name}-exp,node-name=${name}-fl,mountpoint=${image},writable=off`);
      this.fleeces.push({ name, image, takeMs: NaN });
    }
    this.top = top;
    const d = await this.spawnDaemon('main', args);
    this.qmp = d.qmp;
    this.pidValue = d.pid;
    const stopDaemon = d.undo;
    this.undo = this.cleanup.add(`qemu-storage-daemon ${d.pid} and its exports`, async () => {
      this.qmp = null;
      await stopDaemon();
      await this.removeExportsAndFiles();
    });
  }

  private client(): QmpClient {
    if (this.qmp === null) throw new Error('qemu-storage-daemon is not running');
    return this.qmp;
  }

  /**
   * Take a snapshot live: create the qcow2, add it with the origin file as backing, add
   * a copy-before-write filter over the origin file, reopen "origin" onto the filter
   * (one atomic graph change), and export the qcow2 read-only. Once per daemon (see the
   * class comment); several snapshots at once: `restart(chain)`.
   */
  async addFleece(name: string): Promise<Fleece> {
    const qmp = this.client();
    if (this.top !== 'ofile') throw new Error('qemu-storage-daemon 7.2 aborts on a blockdev-reopen above a filter: restart first');
    const started = process.hrtime.bigint();
    await this.createQcow2(qmp, name);
    await qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': `${name}-fl`, file: `${name}-file`, backing: 'ofile' });
    await qmp.execute('blockdev-add', { driver: 'copy-before-write', 'node-name': `${name}-cbw`, file: 'ofile', target: `${name}-fl` });
    await qmp.execute('blockdev-reopen', { options: [{ driver: 'raw', 'node-name': 'origin', file: `${name}-cbw` }] });
    this.top = `${name}-cbw`;
    const takeMs = Number(process.hrtime.bigint() - started) / 1e6;
    const image = join(this.opts.dir, `${this.tag}-${name}.img`);
    await fsp.writeFile(image, '');
    this.mountpoints.push(image);
    await qmp.execute('block-export-add', { type: 'fuse', id: `${name}-exp`, 'node-name': `${name}-fl`, mountpoint: image, writable: false });
    const fleece = { name, image, takeMs };
    this.fleeces.push(fleece);
    return fleece;
  }

  /** A daemon with no snapshot again (see the class comment for why not blockdev-reopen back). */
  async restart(chain: readonly string[] = []): Promise<Fleece[]> {
    await this.stop();
    this.top = 'ofile';
    this.fleeces.length = 0;
    await this.launch(chain);
    return [...this.fleeces];
  }

  /** Peak resident set of the daemon (VmHWM), KiB. */
  vmHWMKiB(): Promise<number> {
    return vmHWMKiB(this.pidValue);
  }

  /** Quit the daemon and remove its exports and files. */
  async stop(): Promise<void> {
    const undo = this.undo;
    this.undo = null;
    if (undo !== null) await undo();
  }

  /** A daemon that died leaves its FUSE exports behind ("transport endpoint not connected"). */
  private async removeExportsAndFiles(): Promise<void> {
    const mounts = await fsp.readFile('/proc/self/mounts', 'utf8');
    for (const mp of this.mountpoints) {
      if (mounts.includes(` ${mp} `)) {
        const r = await run('fusermount', ['-u', mp], { teardown: true });
        if (r.code !== 0) await run('umount', ['-l', mp], { teardown: true });
      }
    }
    for (const mp of this.mountpoints.splice(0)) await fsp.rm(mp, { force: true });
    for (const f of await fsp.readdir(this.opts.dir)) {
      if ((f.startsWith(`${this.tag}-`) || f.startsWith(`${this.tag}.`)) && !f.endsWith('.log')) {
        await fsp.rm(join(this.opts.dir, f), { force: true });
      }
    }
  }
}
