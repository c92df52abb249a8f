#!/usr/bin/env bash
# Runs mount tests against the addon built with sanitizers, the runtime preloaded into
# the daemons only (BLKSNAPFS_DAEMON_PRELOAD, src/daemon/launch.ts), then rebuilds the
# addon without them. Reports land in $BLKSNAPFS_SANITIZER_LOGS (default
# /tmp/blksnapfs-sanitizers); the script fails if any report was written.
#   scripts/sanitize-tests.sh address,undefined dist/test/transport.test.js ...
#   scripts/sanitize-tests.sh thread dist/test/fast-path.test.js
set -uo pipefail
cd "$(dirname "$0")/.."
kind=${1:?usage: sanitize-tests.sh address,undefined|thread TEST.js...}
shift
logs=${BLKSNAPFS_SANITIZER_LOGS:-/tmp/blksnapfs-sanitizers}
rm -rf "$logs" && mkdir -p "$logs"
case "$kind" in
  thread) runtime=$(gcc -print-file-name=libtsan.so) ;;
  *) runtime="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)" ;;
esac
BLKSNAPFS_NATIVE_CFLAGS="-fsanitize=$kind -fno-omit-frame-pointer -g" node scripts/build-native.mjs || exit 1
status=0
BLKSNAPFS_DAEMON_PRELOAD="$runtime" \
  ASAN_OPTIONS="detect_leaks=0:log_path=$logs/asan" \
  UBSAN_OPTIONS="print_stacktrace=1:log_path=$logs/ubsan" \
  TSAN_OPTIONS="log_path=$logs/tsan:report_signal_unsafe=0:suppressions=$(pwd)/scripts/tsan.supp" \
  npx ava "$@" || status=$?
node scripts/build-native.mjs >/dev/null || status=1
if compgen -G "$logs/*" >/dev/null; then
  echo "sanitizer reports in $logs:" >&2
  ls "$logs" >&2
  status=1
fi
exit $status
