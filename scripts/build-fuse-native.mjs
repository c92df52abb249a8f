#!/usr/bin/env node
// Builds fuse-native's addon from its own C source with two small patches, so that
// node-gyp-build (which prefers build/Release over the shipped prebuilds) loads ours.
//
// Why: libfuse 2's high-level API resolves a node id to a path for every read, write
// and release. After `rmdir snapshots/NAME` the directory's node loses its name, so
// reads from an image that is still open would fail with ENOENT. libfuse lets a file
// system opt out (`flag_nullpath_ok`): the call then arrives with a NULL path and the
// file handle, which is all blksnapfs needs. fuse-native never sets that flag and
// would pass NULL to napi_create_string_utf8, so we patch both places.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync, mkdirSync, cpSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const require = createRequire(import.meta.url);
const pkgDir = dirname(require.resolve('fuse-native/package.json'));
const source = join(pkgDir, 'fuse-native.c');
const stampFile = join(pkgDir, 'build', 'Release', 'blksnapfs-patch.stamp');

const patches = [
  {
    why: 'a removed node reaches us as an empty path instead of crashing napi',
    from: /napi_create_string_utf8\(env, l->path, NAPI_AUTO_LENGTH/g,
    to: 'napi_create_string_utf8(env, l->path ? l->path : "", NAPI_AUTO_LENGTH',
  },
  {
    why: 'open files stay usable after their directory is removed (rmdir of a snapshot)',
    from: /struct fuse_operations ops = \{ \};/,
    to: 'struct fuse_operations ops = { };\n  ops.flag_nullpath_ok = 1;',
  },
];

const original = readFileSync(source, 'utf8');
const alreadyPatched = original.includes('ops.flag_nullpath_ok = 1;');
let patched = original;
if (!alreadyPatched) {
  for (const p of patches) {
    if (!p.from.test(patched)) {
      console.error(`build-fuse-native: fuse-native.c does not look as expected (patch: ${p.why})`);
      process.exit(1);
    }
    patched = patched.replace(p.from, p.to);
  }
}
const digest = createHash('sha256').update(patched).digest('hex');
if (existsSync(stampFile) && readFileSync(stampFile, 'utf8') === digest) process.exit(0);

// Build in a scratch copy so a failed build never leaves fuse-native half-modified.
const work = join(pkgDir, '..', '.fuse-native-build');
rmSync(work, { recursive: true, force: true });
cpSync(pkgDir, work, { recursive: true, filter: (p) => !p.includes(`${pkgDir}/build`) });
writeFileSync(join(work, 'fuse-native.c'), patched);
const nodeGyp = process.env.npm_config_node_gyp || join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
const gypArgs = existsSync('/usr/include/node/node_api.h') ? ['--nodedir=/usr'] : [];
try {
  execFileSync(process.execPath, [nodeGyp, 'rebuild', '--loglevel=error', ...gypArgs], {
    cwd: work,
    stdio: ['ignore', 'ignore', 'inherit'],
    env: { ...process.env, NODE_PATH: join(pkgDir, '..') },
  });
} catch (err) {
  console.error('build-fuse-native: node-gyp failed; is a C compiler installed (apt-get install -y build-essential)?');
  process.exit(1);
}
mkdirSync(join(pkgDir, 'build', 'Release'), { recursive: true });
cpSync(join(work, 'build', 'Release', 'fuse.node'), join(pkgDir, 'build', 'Release', 'fuse.node'));
writeFileSync(stampFile, digest);
rmSync(work, { recursive: true, force: true });
console.log('build-fuse-native: built fuse-native with flag_nullpath_ok');
