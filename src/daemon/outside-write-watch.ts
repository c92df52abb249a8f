/**
 * Writes to the origin that did not come through the mount, while it is mounted. Change
 * tracking cannot hold them (nobody told it which blocks), and a snapshot whose image
 * still reads those chunks from the origin is no longer its point in time. So each one
 * seen ends continuity: the engine starts a new generation and marks the live snapshots
 * corrupted (engine.ts `originWrittenOutside`), and one seen at the final check of a
 * clean shutdown makes the saved state "unproven" (cbt-persistence.ts), never "clean".
 *
 * What the kernel lets us see, per origin kind (measured on 6.18; docs/change-tracking.md):
 *
 *   image file    fanotify FAN_MODIFY on its inode names each writer process: any other
 *                 than this daemon (its thread group: the JavaScript I/O threads and any
 *                 native threads alike) is outside. And its mtime/ctime/size, compared
 *                 across a quiet interval: two readings with no write of ours begun in
 *                 between nor in flight at either (origin-write-accounting.ts), so any
 *                 change is someone else's, even one fanotify misses (a shared mapping, a
 *                 loop device attached to the file).
 *   block device  its sector counters (iostats): all our writes together can move
 *                 "sectors written" by at most 8 per 4 KiB page they touched; more is
 *                 someone else's. inotify IN_MODIFY on its node (fanotify reports nothing
 *                 for device nodes), across a quiet interval: any event is someone
 *                 else's. For a loop device, fanotify on its backing file: the device's
 *                 own writes give no event there, so every one is someone else's.
 *
 * Checked every `CHECK_INTERVAL_MS`, before each take (the map a snapshot freezes must
 * not silently miss a write seen by then), and at shutdown after the last write and the
 * origin's datasync. What cannot be seen is listed in `status().cannot_see` (/status
 * change_tracking.outside_writes).
 */
import { promises as fsp, type BigIntStats } from 'node:fs';
import type { Logger as PinoLogger } from 'pino';
import type { OriginWriteAccounting, OriginWriteTally } from '../engine/origin-write-accounting.js';
import { ModifyWatch } from '../storage/modify-watch.js';
import type { OriginDevice } from '../storage/origin-device.js';
import { sectorCounters, type SectorCounters } from '../storage/origin-fingerprint.js';
import { majorMinor } from '../storage/devnum.js';
import { errnoNameOf } from '../errors.js';

const CHECK_INTERVAL_MS = 1000;
/** Sectors a 4 KiB page can cost the device's counter at most. */
const SECTORS_PER_PAGE = 8;

export type DetectionMethod = 'fanotify' | 'timestamps' | 'write-counters' | 'inotify';

export interface Detection {
  at: string;
  how: DetectionMethod[];
  detail: string;
}

export interface OutsideWriteWatchSpec {
  origin: OriginDevice;
  /** Every write of the origin this daemon makes (see origin-write-accounting.ts). */
  accounting: OriginWriteAccounting;
  log: PinoLogger;
  /** A write from outside was seen while mounted (not called for the final check). */
  onDetected(detection: Detection): Promise<void>;
}

interface NamedWatch {
  watch: ModifyWatch;
  /** What it watches, for the detail. */
  what: string;
  /**
   * A loop device's backing file: no write of ours shows there as our process, so every
   * writer is outside, except kernel threads (the loop device's own, see isKernelThread).
   */
  everyWriterIsOutside: boolean;
}

interface Finding {
  how: DetectionMethod;
  detail: string;
}

/** PF_KTHREAD in the flags of /proc/PID/stat (field 9). */
const PF_KTHREAD = 0x00200000;

/**
 * Whether `pid` is a kernel thread. A loop device writes its backing file from kernel
 * threads; this kernel gives fanotify no event for that (measured), but a kernel that
 * did would show the device's own writes, ours, as a kernel thread's.
 */
async function isKernelThread(pid: number): Promise<boolean> {
  const stat = await fsp.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => null);
  if (stat === null) return false;
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const flags = Number(fields[6]);
  return Number.isFinite(flags) && (flags & PF_KTHREAD) !== 0;
}

async function processName(pid: number): Promise<string> {
  const comm = await fsp.readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '');
  return comm.trim().length > 0 ? `${pid} (${comm.trim()})` : String(pid);
}

function sameStamp(a: BigIntStats, b: BigIntStats): boolean {
  return a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs;
}

/** The loop device's backing file, opened and checked to be the very file the device reads. */
async function openBackingFile(origin: OriginDevice): Promise<{ handle: fsp.FileHandle; path: string } | string> {
  const rdev = origin.identity.rdev ?? '';
  const path = (await fsp.readFile(`/sys/dev/block/${rdev}/loop/backing_file`, 'utf8').catch(() => '')).trim();
  if (path === '') return '';
  const backing = await origin.loopBacking();
  if (backing === null) return "the loop device's backing file cannot be told (LOOP_GET_STATUS64 failed)";
  let handle: fsp.FileHandle;
  try {
    handle = await fsp.open(path.replace(/ \(deleted\)$/, ''), 'r');
  } catch (err) {
    return `the loop device's backing file ${path} cannot be opened (${errnoNameOf(err)})`;
  }
  const st = await handle.stat();
  if (majorMinor(st.dev) !== majorMinor(backing.dev) || st.ino !== backing.ino) {
    await handle.close();
    return `the loop device's backing file: ${path} now names another file than the one the device reads`;
  }
  return { handle, path };
}

export class OutsideWriteWatch {
  /** Methods in use on this mount. */
  readonly watchedBy: DetectionMethod[] = [];
  /** What this mount cannot see, one phrase each. */
  readonly cannotSee: string[] = [];
  private readonly named: NamedWatch[] = [];
  private inotify: ModifyWatch | null = null;
  /** Quiet-interval baselines: the reading and `begun` when it was taken. */
  private stampBase: { stamp: BigIntStats; begun: number } | null = null;
  private inotifyBegun = 0;
  private countersBase: SectorCounters | null = null;
  private last: Detection | null = null;
  private detections = 0;
  private running: Promise<Detection | null> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private failureLogged = false;

  private constructor(private readonly spec: OutsideWriteWatchSpec) {}

  /** Set up every watch the kernel allows and take the baselines (before the first write of ours). */
  static async start(spec: OutsideWriteWatchSpec): Promise<OutsideWriteWatch> {
    const w = new OutsideWriteWatch(spec);
    try {
      await w.setUp();
    } catch (err) {
      w.close();
      throw err;
    }
    w.timer = setInterval(() => {
      void w.check().catch(() => undefined);
    }, CHECK_INTERVAL_MS);
    w.timer.unref();
    return w;
  }

  private fanotify(fd: number, what: string, everyWriterIsOutside: boolean): string | null {
    try {
      this.named.push({ watch: ModifyWatch.fanotify(fd), what, everyWriterIsOutside });
      return null;
    } catch (err) {
      return errnoNameOf(err) === 'EPERM' ? 'fanotify needs CAP_SYS_ADMIN' : `fanotify is not available (${errnoNameOf(err)})`;
    }
  }

  private async setUp(): Promise<void> {
    const { origin, accounting } = this.spec;
    if (origin.identity.kind === 'file') {
      const why = this.fanotify(origin.fd, 'the origin file', false);
      if (why === null) this.watchedBy.push('fanotify');
      else this.cannotSee.push(`writes by other processes made while this mount also writes (${why})`);
      this.watchedBy.push('timestamps');
      this.cannotSee.push(
        'writes that no write(2)-like call makes (stores into a shared mapping, a loop device attached to the image file, ' +
          'another host writing its storage) made while this mount also writes or within a check interval of one of its writes',
      );
      const t1 = accounting.tally();
      const stamp = await origin.statNs();
      const t2 = accounting.tally();
      if (t1.ended === t2.begun) this.stampBase = { stamp, begun: t2.begun };
      return;
    }
    this.cannotSee.push('writes through another path to the same disk: multipath members, a shared LUN, another host (iSCSI, RBD, NBD)');
    const rdev = origin.identity.rdev ?? '';
    this.countersBase = await sectorCounters(rdev);
    if (this.countersBase !== null) {
      this.watchedBy.push('write-counters');
      this.cannotSee.push("writes through another node of the device or a shared mapping of it, as long as the device's counters stay within what this mount's own writes could account for");
    } else {
      this.cannotSee.push("writes counted by the device's statistics: they are off or cannot be read (queue/iostats), so the counters prove nothing");
    }
    if ((await fsp.readFile(`/sys/dev/block/${rdev}/partition`, 'utf8').catch(() => null)) !== null) {
      this.cannotSee.push('writes into this partition through the whole disk, made while this mount also writes');
    }
    try {
      this.inotify = ModifyWatch.inotify(origin.fd);
      this.inotifyBegun = accounting.tally().begun;
      this.watchedBy.push('inotify');
    } catch (err) {
      this.cannotSee.push(`writes through the device's node (inotify is not available: ${errnoNameOf(err)})`);
    }
    const backing = await openBackingFile(origin);
    if (typeof backing === 'string') {
      if (backing !== '') this.cannotSee.push(`direct writes into the backing file (${backing})`);
      return;
    }
    try {
      const why = this.fanotify(backing.handle.fd, `the loop device's backing file ${backing.path}`, true);
      if (why === null) {
        if (!this.watchedBy.includes('fanotify')) this.watchedBy.push('fanotify');
      } else {
        this.cannotSee.push(`direct writes into the loop device's backing file (${why})`);
      }
    } finally {
      await backing.handle.close();
    }
  }

  /** Look now; a detection is reported to `onDetected`. One look at a time: callers share it. */
  check(): Promise<Detection | null> {
    this.running ??= this.look(false).finally(() => {
      this.running = null;
    });
    return this.running;
  }

  /**
   * A look that starts now (after waiting for one already running, which may have begun
   * before what the caller wants covered): before a take.
   */
  async checkNow(): Promise<Detection | null> {
    await this.running?.catch(() => undefined);
    return this.check();
  }

  /**
   * The last look, at shutdown, once no write of ours can come any more and the origin
   * was datasynced: what it finds is returned, not reported (the save records it).
   */
  async finalCheck(): Promise<Detection | null> {
    this.stopTimer();
    await this.running?.catch(() => undefined);
    return this.look(true);
  }

  private async look(final: boolean): Promise<Detection | null> {
    let findings: Finding[];
    try {
      findings = await this.findings();
    } catch (err) {
      // A look that fails proves nothing either way; the next one tries again.
      if (!this.failureLogged) this.spec.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'cannot look for writes made outside the mount');
      this.failureLogged = true;
      return null;
    }
    if (findings.length === 0) return null;
    const detection: Detection = {
      at: new Date().toISOString(),
      how: [...new Set(findings.map((f) => f.how))],
      detail: findings.map((f) => f.detail).join('; '),
    };
    this.last = detection;
    this.detections++;
    this.spec.log.warn({ how: detection.how, detail: detection.detail, final }, 'the origin was written outside the mount');
    if (!final) {
      await this.spec.onDetected(detection).catch((err: unknown) => {
        this.spec.log.error({ err: err instanceof Error ? err.message : String(err) }, 'cannot end change tracking after a write made outside the mount');
      });
    }
    return detection;
  }

  private async findings(): Promise<Finding[]> {
    const { origin, accounting } = this.spec;
    const found: Finding[] = [];
    for (const w of this.named) {
      const n = w.watch.drain();
      if (n.lost) found.push({ how: 'fanotify', detail: `write notices for ${w.what} were lost (queue overflow)` });
      for (const pid of n.pids) {
        if (!w.everyWriterIsOutside && pid === process.pid) continue;
        if (w.everyWriterIsOutside && (await isKernelThread(pid))) continue;
        found.push({ how: 'fanotify', detail: `process ${await processName(pid)} wrote ${w.what}` });
      }
    }
    // Between two tallies: `quiet` when no write of ours was in flight or began meanwhile.
    const t1 = accounting.tally();
    const stamp = origin.identity.kind === 'file' ? await origin.statNs() : null;
    const counters = this.countersBase !== null ? await sectorCounters(origin.identity.rdev ?? '') : null;
    const notices = this.inotify?.drain() ?? null;
    const t2 = accounting.tally();
    const quiet = t1.ended === t2.begun;

    if (stamp !== null) {
      const base = this.stampBase;
      if (quiet && base !== null && base.begun === t2.begun && !sameStamp(base.stamp, stamp)) {
        found.push({ how: 'timestamps', detail: 'the origin file changed (size, mtime or ctime) while this mount made no write' });
      }
      if (quiet) this.stampBase = { stamp, begun: t2.begun };
    }
    if (this.countersBase !== null) found.push(...this.counterFindings(counters, t2));
    if (notices !== null) {
      if (quiet && this.inotifyBegun === t2.begun && (notices.anonymous > 0 || notices.lost)) {
        found.push({ how: 'inotify', detail: "the device was written through its node while this mount made no write" });
      }
      if (quiet) this.inotifyBegun = t2.begun;
      if (notices.ended) {
        this.inotify?.close();
        this.inotify = null;
        this.cannotSee.push("writes through the device's node (its inotify watch ended)");
      }
    }
    return found;
  }

  private counterFindings(counters: SectorCounters | null, t2: OriginWriteTally): Finding[] {
    const base = this.countersBase;
    if (base === null) return [];
    if (counters === null) {
      // Statistics switched off (or unreadable) during the mount: from here on they prove nothing.
      this.countersBase = null;
      this.cannotSee.push('writes counted by the device statistics: they were switched off or became unreadable during the mount');
      return [{ how: 'write-counters', detail: "the device's I/O statistics were switched off during the mount: writes made meanwhile cannot be ruled out" }];
    }
    // Every sector written since the base, if all ours, belongs to a page our writes touched.
    const written = counters.written - base.written;
    const discarded = counters.discarded - base.discarded;
    if (written <= SECTORS_PER_PAGE * t2.pages && discarded <= SECTORS_PER_PAGE * t2.discardPages) return [];
    this.countersBase = counters;
    return [{
      how: 'write-counters',
      detail: `the device counted ${written} sectors written and ${discarded} discarded since the mount or the last finding; this mount's writes account for at most ${SECTORS_PER_PAGE * t2.pages} and ${SECTORS_PER_PAGE * t2.discardPages}`,
    }];
  }

  /** For /status change_tracking.outside_writes. */
  status(): object {
    return {
      watched_by: this.watchedBy,
      cannot_see: this.cannotSee,
      detections: this.detections,
      last_detected: this.last,
    };
  }

  private stopTimer(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  close(): void {
    this.stopTimer();
    for (const w of this.named) w.watch.close();
    this.named.length = 0;
    this.inotify?.close();
    this.inotify = null;
  }
}
