#!/bin/bash
# The C bound for the later native fast path: libfuse 3's own passthrough_ll example
# (C, low-level API, no JavaScript), multi-threaded and single-threaded (-s), against
# blksnapfs on both transports and the raw file, the same fio jobs in interleaved rounds.
# passthrough_ll opens the backing file without O_DIRECT (as blksnapfs opens its origin
# and qsd its file node: page cache on), and with cache=never (direct_io, as blksnapfs).
#
#   bash bench/bound/run.sh [ROUNDS] [SECONDS]      (root; needs libfuse3-dev, fio, gcc)
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-4}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DIR=$(mktemp -d /var/tmp/blksnapfs-bound-XXXXXX)
EX=/usr/share/doc/libfuse3-dev/examples
MOUNTS=()
PIDS=()
cleanup() {
  for m in "${MOUNTS[@]}"; do
    node "$ROOT/bin/blksnapfs.js" umount "$m" 2>/dev/null || fusermount3 -u "$m" 2>/dev/null || fusermount -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT

# The example, built as shipped except for the O_DIRECT of the backing open
# (the daemon's buffers are not aligned for it).
sed 's/fd = open(buf, fi->flags & ~O_NOFOLLOW);/fd = open(buf, fi->flags \& ~(O_NOFOLLOW | O_DIRECT));/' "$EX/passthrough_ll.c" > "$DIR/passthrough_ll.c"
cp "$EX/passthrough_helpers.h" "$DIR/"
gcc -O2 "$DIR/passthrough_ll.c" $(pkg-config fuse3 --cflags --libs) -o "$DIR/pt_ll"

mkdir -p "$DIR/src" "$DIR/pt-mt" "$DIR/pt-st" "$DIR/bsf-l3" "$DIR/bsf-fn"
truncate -s 1G "$DIR/src/o.img" "$DIR/o-l3.img" "$DIR/o-fn.img"
for f in "$DIR/src/o.img" "$DIR/o-l3.img" "$DIR/o-fn.img"; do
  fio --name=fill --filename="$f" --rw=write --bs=1M --direct=1 --size=1G --ioengine=libaio --iodepth=4 >/dev/null
done
"$DIR/pt_ll" -o source="$DIR/src",cache=never "$DIR/pt-mt"; MOUNTS+=("$DIR/pt-mt")
"$DIR/pt_ll" -s -o source="$DIR/src",cache=never "$DIR/pt-st"; MOUNTS+=("$DIR/pt-st")
for t in l3 fn; do
  tr=$([ $t = l3 ] && echo libfuse3 || echo fuse-native)
  node "$ROOT/bin/blksnapfs.js" mount "$DIR/o-$t.img" "$DIR/bsf-$t" -o "diff_storage=$DIR/d-$t.diff,diff_size=64M,chunk_size=64K,transport=$tr"
  MOUNTS+=("$DIR/bsf-$t")
done

declare -A TARGET=(
  [raw]="$DIR/src/o.img"
  [passthrough_ll-mt]="$DIR/pt-mt/o.img"
  [passthrough_ll-s]="$DIR/pt-st/o.img"
  [blksnapfs-libfuse3]="$DIR/bsf-l3/origin"
  [blksnapfs-fuse-native]="$DIR/bsf-fn/origin"
)
ORDER=(raw passthrough_ll-mt passthrough_ll-s blksnapfs-libfuse3 blksnapfs-fuse-native)
JOBS=("randwrite 4k 16" "randread 4k 16" "randwrite 4k 1" "write 1M 4" "read 1M 4")

declare -A RES
for round in $(seq 1 "$ROUNDS"); do
  for job in "${JOBS[@]}"; do
    read -r rw bs qd <<<"$job"
    for sys in "${ORDER[@]}"; do
      sync; echo 3 > /proc/sys/vm/drop_caches
      out=$(fio --name=b --filename="${TARGET[$sys]}" --rw="$rw" --bs="$bs" --iodepth="$qd" --direct=1 --ioengine=libaio \
        --size=256M --runtime="$SECS" --time_based --norandommap --randrepeat=1 --output-format=terse --terse-version=3)
      # terse v3: read bw KiB/s = field 7, read IOPS 8, write bw 48, write IOPS 49
      v=$(awk -F';' -v rw="$rw" -v bs="$bs" '{ r = (rw ~ /read/); if (bs == "4k") print (r ? $8 : $49); else printf "%.0f\n", (r ? $7 : $48) / 1024 }' <<<"$out")
      RES["$job|$sys"]="${RES["$job|$sys"]:-} $v"
    done
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
head="| fio job (${SECS}s over 256 MiB; median (runs) of $ROUNDS rounds) | unit |"
for sys in "${ORDER[@]}"; do head="$head $sys |"; done
echo "$head"
echo "| --- | --- |$(printf ' ---: |%.0s' "${ORDER[@]}")"
for job in "${JOBS[@]}"; do
  read -r rw bs qd <<<"$job"
  unit=$([ "$bs" = 4k ] && echo IOPS || echo MiB/s)
  line="| $rw $bs qd$qd | $unit |"
  for sys in "${ORDER[@]}"; do line="$line $(median <<<"${RES["$job|$sys"]}") ($(echo ${RES["$job|$sys"]} | tr ' ' '/')) |"; done
  echo "$line"
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
