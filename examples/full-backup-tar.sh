#!/usr/bin/env bash
# Full backup of a live disk image into a sparse, compressed tar archive.
#   examples/full-backup-tar.sh MOUNTPOINT ARCHIVE.tar.gz
set -euo pipefail
mnt=${1:?usage: $0 MOUNTPOINT ARCHIVE.tar.gz}
out=${2:?usage: $0 MOUNTPOINT ARCHIVE.tar.gz}
name="tar-$(date +%Y%m%d-%H%M%S)"

mkdir "$mnt/snapshots/$name"
trap 'rmdir "$mnt/snapshots/$name"' EXIT
# -S stores runs of zeros as holes; the member is called "image".
tar -C "$mnt/snapshots/$name" -S -czf "$out" image
grep -q '"state": "ok"' "$mnt/snapshots/$name/info" || { echo "snapshot was lost during the backup" >&2; exit 1; }
echo "wrote $out; restore with: tar -xzf $out && dd if=image of=DISK conv=notrunc,sparse bs=1M"
