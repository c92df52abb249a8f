#!/usr/bin/env bash
# One idempotent set-up for a fresh Debian 12 / Node 20 machine (run as root):
# system packages, npm dependencies (which builds the patched fuse-native), and the
# TypeScript build. Every step is skipped when it is already done, so `npm test`,
# `npm run demo` and `npm run bench` can all start with it.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
# libfuse3-dev (headers + libfuse3-3) for our addon; not Debian's fuse3, which would
# replace fuse (libfuse 2's fusermount, which fuse-native needs). fio for the tests
# that watch requests in flight.
for pkg in libfuse2 fuse libfuse3-dev pkg-config build-essential fio rsync e2fsprogs util-linux tar; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if ((${#need_pkgs[@]})); then
  echo "setup: installing ${need_pkgs[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if [ ! -e /dev/fuse ]; then
  echo "setup: /dev/fuse is missing: blksnapfs needs the fuse kernel module" >&2
  exit 1
fi

# npm ci only when the lock file changed since the last install.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci" >&2
  npm ci --no-audit --no-fund --loglevel=error
fi
node scripts/build-fuse-native.mjs
node scripts/build-native.mjs
npx tsc -p tsconfig.json

# mount(8) runs /sbin/mount.TYPE for `mount -t blksnapfs`; point it at our helper.
helper="$(pwd)/bin/mount.blksnapfs.js"
for dir in /usr/sbin /usr/local/bin; do
  ln -sfn "$helper" "$dir/mount.blksnapfs" 2>/dev/null || true
done
ln -sfn "$(pwd)/bin/blksnapfs.js" /usr/local/bin/blksnapfs 2>/dev/null || true
