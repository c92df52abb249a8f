/**
 * `blksnapfs events` never prints terminal escape sequences from event fields raw
 * (issue 9, defect 9). The command reads DIR/events until it ends; a plain file
 * standing in for a mount's events file is enough to give it hostile lines.
 */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { CLI, run, scratchDir } from './helpers/fixture.js';

const ESC = '\u001b';
const hostile = [
  // The daemon's JSON escapes the control characters; JSON.parse turns them back.
  JSON.stringify({ seq: 1, time: 't', type: 'storage-appended', path: `/x/${ESC}]0;owned${ESC}\\${ESC}[2J`, bytes: 1 }),
  // DEL and C1 (CSI is 0x9b) may stand raw in JSON strings.
  '{"seq":2,"time":"t","type":"corrupted","message":"a\\u001b[31mred\u007f\u009b"}',
  // Not JSON at all, with a raw escape.
  `not json ${ESC}[2J`,
].join('\n');

async function eventsOf(args: string[]): Promise<string> {
  const r = await run(process.execPath, [CLI, 'events', ...args]);
  if (r.code !== 0) throw new Error(`blksnapfs events exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

test('blksnapfs events escapes control characters from event fields, in both forms', async (t) => {
  const dir = await scratchDir(t);
  await fsp.writeFile(join(dir, 'events'), `${hostile}\n`);
  const readable = await eventsOf([dir]);
  t.false(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/.test(readable), JSON.stringify(readable));
  t.true(readable.includes('path=/x/\\x1b]0;owned\\x1b\\\\x1b[2J'), readable);
  t.true(readable.includes('message=a\\x1b[31mred\\x7f\\x9b'), readable);
  t.true(readable.includes('not json \\x1b[2J'), readable);
  const json = await eventsOf(['--json', dir]);
  t.false(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/.test(json), JSON.stringify(json));
  const [first, second] = json.split('\n');
  t.like(JSON.parse(first ?? ''), { path: `/x/${ESC}]0;owned${ESC}\\${ESC}[2J` }, 'the JSON form means the same');
  t.like(JSON.parse(second ?? ''), { message: `a${ESC}[31mred\u007f\u009b` });
});
