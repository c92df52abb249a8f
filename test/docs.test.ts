/** The README's options table and the daemon's options table say the same thing. */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { OPTION_TABLE } from '../src/daemon/options.js';
import { ROOT } from './helpers/fixture.js';

test('every mount option is documented in the README, and the README names no other', async (t) => {
  const readme = await fsp.readFile(join(ROOT, 'README.md'), 'utf8');
  for (const o of OPTION_TABLE) t.true(readme.includes(`\`${o.name}`), `README documents ${o.name}`);
  const table = readme.slice(readme.indexOf('| option | meaning |'), readme.indexOf('Sizes take K, M, G, T'));
  const documented = [...table.matchAll(/^\| `([a-z_]+)/gm)].map((m) => m[1]);
  for (const name of documented) t.true(OPTION_TABLE.some((o) => o.name === name), `${name ?? ''} is a real option`);
});

test('the documents the README links to exist', async (t) => {
  const readme = await fsp.readFile(join(ROOT, 'README.md'), 'utf8');
  const links = [...readme.matchAll(/\]\(((?:docs|examples|bench)\/[^)]+)\)/g)].map((m) => m[1] ?? '');
  t.true(links.length > 5);
  for (const link of links) await t.notThrowsAsync(() => fsp.access(join(ROOT, link)), link);
});
