/**
 * The background daemon process: argv = ORIGIN MOUNTPOINT OPTIONS. It reports "ready"
 * or the error to its parent over IPC, then cuts the tie so the parent can exit.
 */
import { emptyOptions, parseOptionString } from './options.js';
import { runForeground } from './launch.js';

const [origin, mountpoint, optionString] = process.argv.slice(2);
// Started with cwd '/' by launch.ts; make sure of it (the daemon must not hold the caller's directory).
process.chdir('/');
const opts = emptyOptions();
parseOptionString(opts, optionString ?? '');

const send = (m: { type: 'ready' } | { type: 'error'; message: string }): void => {
  if (process.send === undefined) return;
  process.send(m, () => {
    if (process.connected) process.disconnect();
  });
};

runForeground(origin ?? '', mountpoint ?? '', opts, send).then(
  (code) => process.exit(code),
  (err: unknown) => {
    send({ type: 'error', message: err instanceof Error ? err.message : String(err) });
    process.exit(32);
  },
);
