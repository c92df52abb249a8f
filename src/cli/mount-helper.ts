/**
 * mount.blksnapfs SPEC DIR [-sfnv] [-N NS] [-o OPTIONS]: the external-helper syntax
 * mount(8) uses, so `mount -t blksnapfs` and fstab lines work.
 */
import { BlksnapError } from '../errors.js';
import { EXIT_USAGE, launch } from '../daemon/launch.js';
import { emptyOptions, parseOptionString } from '../daemon/options.js';

const USAGE = 'usage: mount.blksnapfs ORIGIN MOUNTPOINT [-sfnv] [-N NAMESPACE] [-o OPTION[,OPTION...]]';

export async function mountHelper(argv: string[]): Promise<number> {
  if (argv.includes('-h') || argv.includes('--help')) {
    process.stdout.write(`${USAGE}\nOptions: see blksnapfs mount --help\n`);
    return 0;
  }
  const opts = emptyOptions();
  const positional: string[] = [];
  let fake = false;
  try {
    for (let i = 0; i < argv.length; i++) {
      const arg = argv[i] ?? '';
      if (arg === '-o') {
        const value = argv[++i];
        if (value === undefined) throw BlksnapError.of('EINVAL', '-o needs an option list');
        parseOptionString(opts, value);
      } else if (arg.startsWith('-o')) {
        parseOptionString(opts, arg.slice(2));
      } else if (arg === '-N' || arg === '-t') {
        i++; // namespace / type: nothing to do with them here
      } else if (/^-[sfnv]+$/.test(arg)) {
        if (arg.includes('f')) fake = true;
      } else if (arg.startsWith('-')) {
        throw BlksnapError.of('EINVAL', `unknown flag ${arg}`);
      } else {
        positional.push(arg);
      }
    }
    if (positional.length !== 2) throw BlksnapError.of('EINVAL', USAGE);
  } catch (err) {
    process.stderr.write(`mount.blksnapfs: ${err instanceof Error ? err.message : String(err)}\n`);
    return EXIT_USAGE;
  }
  if (fake) return 0;
  const [origin, mountpoint] = positional as [string, string];
  return launch(origin, mountpoint, opts);
}
