/** The slice of pino's interface the engine uses, so tests can pass a silent one. */
export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export const silentLogger: Logger = {
  debug: () => undefined,
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
};

/**
 * A logger whose calls never throw. The engine logs from inside its critical sections
 * (a snapshot just numbered, a name just removed, a copy just failed); a log that cannot
 * be written must cost a log line, never the operation. The daemon's own destination is
 * best-effort already (src/daemon/log-destination.ts); this guards any other logger too.
 */
export function bestEffort(log: Logger): Logger {
  const guard = (level: keyof Logger) => (obj: object, msg?: string): void => {
    try {
      if (msg === undefined) log[level](obj);
      else log[level](obj, msg);
    } catch {
      // the log is best-effort; its destination reports its own failure
    }
  };
  return { debug: guard('debug'), info: guard('info'), warn: guard('warn'), error: guard('error') };
}
