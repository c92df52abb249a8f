/**
 * pino JSON logs: to a file (-o log=PATH), to stderr in the foreground, else nowhere.
 * Best effort: a log that cannot be written never throws into the daemon (see
 * log-destination.ts); `onLogFailure` tells the daemon when it first fails.
 */
import { pino, type Logger as PinoLogger } from 'pino';
import type { MountOptions } from './options.js';
import { BestEffortDestination, type LogFailure } from './log-destination.js';

const destinations = new WeakMap<PinoLogger, BestEffortDestination>();

export function createLogger(opts: MountOptions): PinoLogger {
  const base = { level: opts.logLevel, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime };
  let destination: BestEffortDestination;
  if (opts.log !== undefined) destination = BestEffortDestination.toFile(opts.log);
  else if (opts.foreground) destination = BestEffortDestination.toStderr();
  else return pino({ ...base, level: 'silent' });
  const log = pino(base, destination);
  destinations.set(log, destination);
  return log;
}

/** Call `listener` once when the log of `log` (made by createLogger) first fails to be written. */
export function onLogFailure(log: PinoLogger, listener: (f: LogFailure) => void): void {
  destinations.get(log)?.onFailure(listener);
}
