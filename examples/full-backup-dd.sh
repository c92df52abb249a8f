#!/usr/bin/env bash
# Full backup of a live disk image with plain dd: snapshot, copy, destroy.
#   examples/full-backup-dd.sh MOUNTPOINT BACKUP_FILE
# MOUNTPOINT is a blksnapfs mount (mount.blksnapfs disk.img MOUNTPOINT -o ...).
set -euo pipefail
mnt=${1:?usage: $0 MOUNTPOINT BACKUP_FILE}
out=${2:?usage: $0 MOUNTPOINT BACKUP_FILE}
name="backup-$(date +%Y%m%d-%H%M%S)"

mkdir "$mnt/snapshots/$name"                      # point in time
trap 'rmdir "$mnt/snapshots/$name"' EXIT          # always release the snapshot
# conv=sparse keeps runs of zeros as holes in the backup file.
dd if="$mnt/snapshots/$name/image" of="$out" bs=1M conv=sparse status=progress
cmp "$mnt/snapshots/$name/image" "$out"           # verify while the snapshot is held
grep -q '"state": "ok"' "$mnt/snapshots/$name/info" || { echo "snapshot was lost during the backup" >&2; exit 1; }
echo "backed up $(stat -c %s "$out") bytes to $out"
