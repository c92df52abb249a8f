/**
 * fuse-native with one more operation, `fallocate`, for the fault-injection file system
 * only (test/helpers/fault-fs-process.ts). The daemon under test preallocates its
 * difference storage with fallocate(2); fuse-native 2.2.6 does not offer that
 * operation, so the kernel would answer EOPNOTSUPP and a storage on the fault file
 * system could never be created or grown.
 *
 * The project's own fuse-native (node_modules, used by the daemon) is left alone: this
 * module patches a private copy of the package's C and JavaScript sources, builds it
 * once with node-gyp under dist/.fault-fuse-native/HASH (reused while the sources are
 * unchanged; an atomic rename makes concurrent builders safe), and loads it from
 * there. Under dist/ the copy finds fuse-native's own dependencies in the project's
 * node_modules. Everything untyped about it stays in this file.
 */
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import type { Cb, CbWith, FuseInstance, FuseStat, FuseStatFs } from '../../src/fuse/fuse-native/binding.js';
import { ROOT } from './fixture.js';

const execFileP = promisify(execFile);
const require = createRequire(import.meta.url);

/** The operations the fault file system implements (fuse-native's names and argument orders). */
export interface FaultFuseOps {
  init(cb: Cb): void;
  getattr(path: string, cb: CbWith<FuseStat>): void;
  fgetattr(path: string, fd: number, cb: CbWith<FuseStat>): void;
  readdir(path: string, cb: (code: number, names?: string[]) => void): void;
  open(path: string, flags: number, cb: CbWith<number>): void;
  create(path: string, mode: number, cb: CbWith<number>): void;
  release(path: string, fd: number, cb: Cb): void;
  read(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: Cb): void;
  write(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: Cb): void;
  truncate(path: string, size: number, cb: Cb): void;
  ftruncate(path: string, fd: number, size: number, cb: Cb): void;
  fallocate(path: string, fd: number, mode: number, offset: number, length: number, cb: Cb): void;
  flush(path: string, fd: number, cb: Cb): void;
  fsync(path: string, datasync: boolean, fd: number, cb: Cb): void;
  unlink(path: string, cb: Cb): void;
  rename(src: string, dest: string, cb: Cb): void;
  mkdir(path: string, mode: number, cb: Cb): void;
  rmdir(path: string, cb: Cb): void;
  chmod(path: string, mode: number, cb: Cb): void;
  utimens(path: string, atime: number, mtime: number, cb: Cb): void;
  statfs(path: string, cb: CbWith<FuseStatFs>): void;
}

interface Patch {
  why: string;
  /** Text that must occur in the source; the insertion goes right before or after it. */
  anchor: string;
  where: 'before' | 'after';
  insert: string;
}

/** The handler: arguments (path, fd, mode, offset, length), no values back. */
const C_FALLOCATE = `
FUSE_METHOD_VOID(fallocate, 7, 0, (const char *path, int mode, off_t offset, off_t length, struct fuse_file_info *info), {
  l->path = path;
  l->mode = mode;
  l->offset = offset;
  l->len = length;
  l->info = info;
}, {
  napi_create_string_utf8(env, l->path ? l->path : "", NAPI_AUTO_LENGTH, &(argv[2]));
  napi_create_uint32(env, l->info != NULL ? l->info->fh : 0, &(argv[3]));
  napi_create_uint32(env, l->mode, &(argv[4]));
  FUSE_UINT64_TO_INTS_ARGV(l->offset, 5)
  FUSE_UINT64_TO_INTS_ARGV(l->len, 7)
})
`;

/** Opcode 34 is free: fuse-native sizes its handler tables for 35. */
const C_PATCHES: Patch[] = [
  { why: 'opcode', anchor: 'static const uint32_t op_rmdir = 33;', where: 'after', insert: '\nstatic const uint32_t op_fallocate = 34;' },
  { why: 'handler', anchor: '\nFUSE_METHOD(readlink,', where: 'before', insert: C_FALLOCATE },
  { why: 'registration', anchor: 'if (implemented[op_rmdir]) ops.rmdir = fuse_native_rmdir;', where: 'after', insert: '\n  if (implemented[op_fallocate]) ops.fallocate = fuse_native_fallocate;' },
  { why: 'signal export', anchor: 'NAPI_EXPORT_FUNCTION(fuse_native_signal_ftruncate)', where: 'after', insert: '\n  NAPI_EXPORT_FUNCTION(fuse_native_signal_fallocate)' },
  { why: 'opcode export', anchor: 'NAPI_EXPORT_UINT32(op_ftruncate)', where: 'after', insert: '\n  NAPI_EXPORT_UINT32(op_fallocate)' },
];

const JS_FALLOCATE = `  _op_fallocate (signal, path, fd, mode, offsetLow, offsetHigh, lengthLow, lengthHigh) {
    this.ops.fallocate(path, fd, mode, getDoubleArg(offsetLow, offsetHigh), getDoubleArg(lengthLow, lengthHigh), err => {
      return signal(err)
    })
  }

`;

const JS_PATCHES: Patch[] = [
  {
    why: 'opcode table',
    anchor: "  ['rmdir', {\n    op: binding.op_rmdir\n  }]",
    where: 'after',
    insert: ",\n  ['fallocate', {\n    op: binding.op_fallocate\n  }]",
  },
  { why: 'dispatch', anchor: '  _op_ftruncate (signal, path, fd, sizeLow, sizeHigh) {', where: 'before', insert: JS_FALLOCATE },
];

function apply(text: string, patches: Patch[], file: string): string {
  let out = text;
  for (const p of patches) {
    const at = out.indexOf(p.anchor);
    if (at < 0) throw new Error(`fault-fuse-native: ${file} does not look as expected (patch: ${p.why})`);
    const cut = p.where === 'before' ? at : at + p.anchor.length;
    out = out.slice(0, cut) + p.insert + out.slice(cut);
  }
  return out;
}

async function build(pkgDir: string, target: string, cSource: string, jsSource: string): Promise<void> {
  const work = `${target}.tmp-${process.pid}`;
  await fsp.rm(work, { recursive: true, force: true });
  await fsp.cp(pkgDir, work, { recursive: true, filter: (p) => !p.startsWith(join(pkgDir, 'build')) && !p.startsWith(join(pkgDir, 'prebuilds')) });
  await fsp.writeFile(join(work, 'fuse-native.c'), cSource);
  await fsp.writeFile(join(work, 'index.js'), jsSource);
  const nodeGyp = process.env['npm_config_node_gyp'] ?? join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  const gypArgs = existsSync('/usr/include/node/node_api.h') ? ['--nodedir=/usr'] : [];
  try {
    await execFileP(process.execPath, [nodeGyp, 'rebuild', '--loglevel=error', ...gypArgs], {
      cwd: work,
      env: { ...process.env, NODE_PATH: join(ROOT, 'node_modules') },
      maxBuffer: 16 * 1024 * 1024,
    });
    await fsp.rename(work, target).catch(async (err: unknown) => {
      // Another process built the same sources first: use theirs.
      if (!existsSync(join(target, 'build', 'Release', 'fuse.node'))) throw err;
    });
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
}

interface FuseConstructor {
  new (mountpoint: string, ops: FaultFuseOps, opts: Record<string, unknown>): FuseInstance;
}

let building: Promise<string> | null = null;

/**
 * Build the patched fuse-native unless a build of the same sources exists; resolves to
 * its directory. The test process calls this before starting a fault file system, so
 * the tests of one worker share one build.
 */
export function buildFaultFuse(): Promise<string> {
  building ??= (async () => {
    const pkgDir = dirname(require.resolve('fuse-native/package.json', { paths: [ROOT] }));
    const cSource = apply(await fsp.readFile(join(pkgDir, 'fuse-native.c'), 'utf8'), C_PATCHES, 'fuse-native.c');
    const jsSource = apply(await fsp.readFile(join(pkgDir, 'index.js'), 'utf8'), JS_PATCHES, 'index.js');
    const digest = createHash('sha256').update(cSource).update(jsSource).digest('hex').slice(0, 16);
    const base = join(ROOT, 'dist', '.fault-fuse-native');
    const target = join(base, digest);
    if (!existsSync(join(target, 'build', 'Release', 'fuse.node'))) {
      await fsp.mkdir(base, { recursive: true });
      await build(pkgDir, target, cSource, jsSource);
    }
    return target;
  })();
  return building;
}

/** A fuse-native instance (with fallocate) whose libfuse options are exactly `options`. */
export async function createFaultFuse(mountpoint: string, ops: FaultFuseOps, options: string[]): Promise<FuseInstance> {
  const FuseClass = require(await buildFaultFuse()) as FuseConstructor;
  const instance = new FuseClass(mountpoint, ops, { timeout: false }) as FuseInstance & { _fuseOptions: () => string };
  // fuse-native's own option builder drops or mangles some values (see src/fuse/fuse-native-binding.ts).
  instance._fuseOptions = (): string => (options.length > 0 ? `-o${options.join(',')}` : '');
  return instance;
}
