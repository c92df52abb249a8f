#!/usr/bin/env bash
# Incremental backups of a blksnapfs origin with nothing but dd and the cbtmap.
#
#   examples/incremental-dd.sh MOUNT BACKUP_DIR
#
# Each round takes a snapshot, copies into BACKUP_DIR/disk.img either the whole image
# (the first time, or when the change-tracking generation changed) or only the byte
# ranges `blksnapfs cbt changed --since N` lists, then destroys the snapshot: with
# change tracking there is nothing to keep between backups but two numbers.
# BACKUP_DIR/state holds them: the generation_id and changes_number disk.img matches.
#
# Run it from cron or a systemd timer, or let it loop: ROUNDS=24 INTERVAL=3600.
# The image is replaced by a rename only once complete, and the state is written
# after it: if a round is interrupted, disk.img is the previous backup, and at worst
# the next round copies more than it had to (changes since an older number include
# the newer ones), never less.
set -euo pipefail

BLKSNAPFS=${BLKSNAPFS:-$(command -v blksnapfs || echo "$(cd "$(dirname "$0")/.." && pwd)/bin/blksnapfs.js")}
mnt=${1:?usage: incremental-dd.sh MOUNT BACKUP_DIR}
dir=${2:?usage: incremental-dd.sh MOUNT BACKUP_DIR}
rounds=${ROUNDS:-1}
interval=${INTERVAL:-0}

snap=
cleanup() { if [ -n "$snap" ]; then rmdir "$mnt/snapshots/$snap" 2>/dev/null || true; fi; rm -f "$dir/disk.img.new" "$dir/state.new"; }
trap cleanup EXIT

backup_once() {
  snap="dd-$(date +%Y%m%d-%H%M%S)-$$-$1"
  mkdir "$mnt/snapshots/$snap"
  local image="$mnt/snapshots/$snap/image" new="$dir/disk.img.new" gen cn size prev_gen=none prev_cn=0
  read -r gen cn size < <("$BLKSNAPFS" cbt info "$mnt" "$snap" |
    awk '{ v[$1] = $2 } END { print v["generation_id"], v["changes_number"], v["device_capacity"] }')
  if [ -f "$dir/state" ] && [ -f "$dir/disk.img" ]; then read -r prev_gen prev_cn < "$dir/state"; fi

  if [ "$prev_gen" = "$gen" ]; then
    # Same generation: start from a copy of the last backup (a reflink where the file
    # system can), and dd in every range whose cbtmap byte is greater than prev_cn.
    cp --reflink=auto --sparse=always "$dir/disk.img" "$new"
    local ranges=0 bytes=0 off len
    while read -r off len; do
      dd if="$image" of="$new" bs=1M iflag=skip_bytes,count_bytes oflag=seek_bytes conv=notrunc \
        skip="$off" seek="$off" count="$len" status=none
      ranges=$((ranges + 1)) bytes=$((bytes + len))
    done < <("$BLKSNAPFS" cbt changed "$mnt" "$snap" --since "$prev_cn" --generation "$gen")
    echo "$snap: incremental since changes_number $prev_cn: $ranges range(s), $bytes bytes"
  else
    # First backup, or the map was reset (new generation): copy it all, holes for zeros.
    [ "$prev_gen" = none ] || echo "$snap: generation changed ($prev_gen -> $gen): full backup"
    rm -f "$new"
    dd if="$image" of="$new" bs=1M conv=sparse status=none
    truncate -s "$size" "$new"   # conv=sparse leaves a trailing run of zeros unwritten
    echo "$snap: full backup, $size bytes"
  fi
  sync "$new"
  mv "$new" "$dir/disk.img"
  echo "$gen $cn" > "$dir/state.new"
  sync "$dir/state.new"
  mv "$dir/state.new" "$dir/state"
  rmdir "$mnt/snapshots/$snap"
  snap=
}

mkdir -p "$dir"
for ((round = 1; round <= rounds; round++)); do
  backup_once "$round"
  if ((round < rounds)); then sleep "$interval"; fi
done
