/** pino JSON logs: to a file (-o log=PATH), to stderr in the foreground, else nowhere. */
import { pino, type Logger as PinoLogger } from 'pino';
import type { MountOptions } from './options.js';

export function createLogger(opts: MountOptions): PinoLogger {
  const base = { level: opts.logLevel, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime };
  if (opts.log !== undefined) return pino(base, pino.destination({ dest: opts.log, append: true, sync: true, mkdir: true }));
  if (opts.foreground) return pino(base, pino.destination({ dest: 2, sync: true }));
  return pino({ ...base, level: 'silent' });
}
