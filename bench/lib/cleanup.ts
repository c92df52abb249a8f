/**
 * Teardown that always runs: every resource the bench creates (a mount, a daemon, a
 * qemu-storage-daemon, a scratch file) registers how to undo itself the moment it
 * exists. The stack is unwound in reverse order on success, on failure and on Ctrl-C
 * (SIGINT, SIGTERM, SIGHUP), after the tool children still running are killed so they
 * do not keep the mounts busy.
 */
import { killRunning, stopping } from './proc.js';

interface Entry {
  name: string;
  undo: () => Promise<void>;
}

export class Cleanup {
  private readonly stack: Entry[] = [];
  private running: Promise<void> | null = null;

  /** Register an undo step; the returned function runs it now (and unregisters it). */
  add(name: string, undo: () => Promise<void>): () => Promise<void> {
    const entry: Entry = { name, undo };
    this.stack.push(entry);
    return async () => {
      const i = this.stack.indexOf(entry);
      if (i < 0) return;
      this.stack.splice(i, 1);
      await entry.undo();
    };
  }

  /** Unwind everything still registered, newest first; errors are reported, not thrown. */
  runAll(): Promise<void> {
    this.running ??= (async () => {
      killRunning();
      for (let entry = this.stack.pop(); entry !== undefined; entry = this.stack.pop()) {
        try {
          await entry.undo();
        } catch (err) {
          process.stderr.write(`bench: cleanup of ${entry.name} failed: ${err instanceof Error ? err.message : String(err)}\n`);
        }
      }
    })().finally(() => {
      this.running = null;
    });
    return this.running;
  }

  /**
   * On a signal or a crash: stop starting anything, kill the tools that run, let the
   * main flow fail out of what it was doing (it must not create resources behind the
   * unwinding), unwind, exit. A second Ctrl-C while unwinding is ignored.
   */
  installHandlers(mainSettled: () => Promise<unknown>): void {
    const stop = (why: string, code: number): void => {
      if (stopping.now) {
        process.stderr.write('bench: still cleaning up, please wait\n');
        return;
      }
      stopping.now = true;
      process.stderr.write(`\nbench: ${why}: cleaning up mounts and daemons...\n`);
      killRunning();
      const settled = Promise.race([mainSettled().catch(() => undefined), new Promise((r) => setTimeout(r, 60_000))]);
      void settled
        .then(() => this.runAll())
        .finally(() => process.exit(code));
    };
    process.on('SIGINT', () => stop('interrupted', 130));
    process.on('SIGTERM', () => stop('terminated', 143));
    process.on('SIGHUP', () => stop('hung up', 129));
    process.on('uncaughtException', (err) => stop(`crashed: ${err.stack ?? err.message}`, 1));
    process.on('unhandledRejection', (err) => stop(`crashed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`, 1));
  }
}
