#!/usr/bin/env bash
# File-level backup: loop-mount a snapshot of a live file system read-only and rsync
# its files out. `noload` skips the ext4 journal replay a read-only device cannot take.
#   examples/rsync-files-from-snapshot.sh MOUNTPOINT DEST_DIR
set -euo pipefail
mnt=${1:?usage: $0 MOUNTPOINT DEST_DIR}
dest=${2:?usage: $0 MOUNTPOINT DEST_DIR}
name="files-$(date +%Y%m%d-%H%M%S)"
view=$(mktemp -d)
loop=""

cleanup() {
  mountpoint -q "$view" && umount "$view"
  [ -n "$loop" ] && losetup -d "$loop"
  rmdir "$view"
  [ -d "$mnt/snapshots/$name" ] && rmdir "$mnt/snapshots/$name"
}
trap cleanup EXIT

# If the origin's file system is mounted (e.g. through losetup on $mnt/origin), freeze it
# around the mkdir for a clean point in time: fsfreeze -f /srv; mkdir ...; fsfreeze -u /srv
mkdir "$mnt/snapshots/$name"
loop=$(losetup -r -f --show "$mnt/snapshots/$name/image")
mount -o ro,noload "$loop" "$view"
rsync -aHAX --delete "$view/" "$dest/"
echo "files of snapshot $name are in $dest"
