#!/usr/bin/env node
// Builds our libfuse 3 addon and its watchdog program (native/fuse3, binding.gyp) with
// node-gyp against the system's libfuse 3 headers (Debian: libfuse3-dev) and the headers
// of the Node that runs this script, found next to it (no download), or node-gyp's
// own copy if it has none. Skips the build when every output is newer than every
// source, so `npm test` and `npm run demo` stay quick on a machine that is set up.
// BLKSNAPFS_NATIVE_CFLAGS adds compiler flags (e.g. -fsanitize=address,undefined).
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outputs = ['blksnapfs_fuse3.node', 'blksnapfs-watchdog'].map((f) => join(root, 'build', 'Release', f));
const sources = [join(root, 'binding.gyp'), ...readdirSync(join(root, 'native', 'fuse3')).map((f) => join(root, 'native', 'fuse3', f))];
const extra = process.env.BLKSNAPFS_NATIVE_CFLAGS ?? '';
const stamp = join(root, 'build', 'cflags.stamp');

const newest = Math.max(...sources.map((s) => statSync(s).mtimeMs));
const sameFlags = existsSync(stamp) && readFileSync(stamp, 'utf8') === extra;
if (outputs.every((o) => existsSync(o) && statSync(o).mtimeMs > newest) && sameFlags) process.exit(0);

const nodeGyp = process.env.npm_config_node_gyp || join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
// PREFIX/bin/node has its headers in PREFIX/include/node (Debian's and NodeSource's
// packages, the official tarballs, nvm): then node-gyp needs no network.
const nodePrefix = dirname(dirname(process.execPath));
const gypArgs = existsSync(join(nodePrefix, 'include', 'node', 'node_api.h')) ? [`--nodedir=${nodePrefix}`] : [];
try {
  execFileSync(process.execPath, [nodeGyp, 'rebuild', '--loglevel=error', ...gypArgs], {
    cwd: root,
    stdio: ['ignore', 'ignore', 'inherit'],
    env: { ...process.env, CFLAGS: `${process.env.CFLAGS ?? ''} ${extra}`.trim(), LDFLAGS: `${process.env.LDFLAGS ?? ''} ${extra}`.trim() },
  });
} catch {
  console.error(`build-native: node-gyp failed${gypArgs.length === 0 ? ` (no Node headers in ${nodePrefix}/include/node: node-gyp had to fetch them)` : ''}; are libfuse3-dev, pkg-config and a C compiler installed (npm run setup installs them)?`);
  process.exit(1);
}
writeFileSync(stamp, extra);
console.log(`build-native: built the libfuse 3 addon${extra ? ` (${extra})` : ''}`);
