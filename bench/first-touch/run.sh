#!/bin/bash
# Where a 4 KiB first touch at qd1 spends its time (issue 17), on a small mount: a 256 MiB
# origin of random data, chunk_size=64K, transport libfuse3, a fresh snapshot, the page
# cache dropped, then fio replaying one 4 KiB O_DIRECT write into each chunk of the first
# 64 MiB in random order at queue depth 1 (every write a first touch, as in the bench's
# randwrite phase). Prints fio's completion latency; with PERF_TRACE=DIR also writes the
# daemon's system calls per thread (`perf trace -s`, which slows every call: use it for
# counts and shares, not for the latency) to DIR/perf-trace.ROUND.txt. Not part of
# `npm run bench`.
#
#   bash bench/first-touch/run.sh [TREE] [ROUNDS]     (root; fio, python3; perf for PERF_TRACE)
#
# TREE is a blksnapfs checkout to run (default: this one), so that two builds can be
# compared in interleaved rounds: run.sh /path/a 3; run.sh /path/b 3.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TREE=${1:-$ROOT}
ROUNDS=${2:-3}
DIR=$(mktemp -d /var/tmp/blksnapfs-first-touch-XXXXXX)
MNT="$DIR/mnt"
cleanup() {
  if grep -q " $MNT " /proc/mounts; then node "$TREE/bin/blksnapfs.js" umount "$MNT" || umount -l "$MNT" || true; fi
  rm -rf "$DIR"
}
trap cleanup EXIT
mkdir -p "$MNT"
fio --name=fill --filename="$DIR/origin.img" --rw=write --bs=1M --direct=1 --size=256M --ioengine=libaio --iodepth=4 \
  --buffer_compress_percentage=0 --refill_buffers --output-format=terse >/dev/null
for round in $(seq 1 "$ROUNDS"); do
  python3 - "$DIR/iolog" "$round" <<'PY'
import random, sys
random.seed(int(sys.argv[2]))
chunks = list(range(64 * 1024 * 1024 // 65536)); random.shuffle(chunks)
with open(sys.argv[1], "w") as f:
    f.write("fio version 2 iolog\ntarget add\ntarget open\n")
    for c in chunks: f.write("target write %d 4096\n" % (c * 65536 + random.randrange(16) * 4096))
    f.write("target close\n")
PY
  node "$TREE/bin/blksnapfs.js" mount "$DIR/origin.img" "$MNT" \
    -o "diff_storage=$DIR/diff,diff_size=320M,chunk_size=64K,cbt_state=$DIR/cbt,transport=libfuse3"
  pid=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['pid'])" "$MNT/status")
  # A warm daemon: 2 s of 4 KiB writes elsewhere, no snapshot yet.
  fio --name=warm --ioengine=libaio --direct=1 --rw=randwrite --bs=4k --iodepth=1 --filename="$MNT/origin" \
    --size=64M --offset=128M --runtime=2 --time_based --allow_file_create=0 --output-format=terse >/dev/null
  mkdir "$MNT/snapshots/s"
  sync; echo 3 > /proc/sys/vm/drop_caches
  tracer=""
  if [ -n "${PERF_TRACE:-}" ]; then mkdir -p "$PERF_TRACE"; perf trace -s -p "$pid" -o "$PERF_TRACE/perf-trace.$round.txt" & tracer=$!; sleep 1; fi
  fio --name=first-touch --ioengine=libaio --direct=1 --rw=randwrite --bs=4k --iodepth=1 --read_iolog="$DIR/iolog" \
    --replay_no_stall=1 --replay_redirect="$MNT/origin" --allow_file_create=0 --output-format=json > "$DIR/fio.json"
  if [ -n "$tracer" ]; then kill -INT "$tracer"; wait "$tracer" || true; fi
  python3 - "$DIR/fio.json" "$round" <<'PY'
import json, sys
w = json.load(open(sys.argv[1]))["jobs"][0]["write"]; c = w["clat_ns"]; p = c["percentile"]
print("round %s: %.0f IOPS, completion latency mean %.0f us, p50 %.0f, p90 %.0f, p99 %.0f" % (
    sys.argv[2], w["iops"], c["mean"] / 1e3, p["50.000000"] / 1e3, p["90.000000"] / 1e3, p["99.000000"] / 1e3))
PY
  node "$TREE/bin/blksnapfs.js" umount "$MNT"
done
