#!/usr/bin/env bash
# The main job end to end on a generated disk image: mount it, put a live ext4 on it
# through a loop device, take a snapshot while it is being written, back the snapshot
# up with dd, check the backup, read files out of the snapshot, destroy it, unmount.
# Everything it creates lives in one scratch directory and is removed at the end.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
blksnapfs="node $here/bin/blksnapfs.js"
mount_helper="node $here/bin/mount.blksnapfs.js"
work="$(mktemp -d /var/tmp/blksnapfs-demo.XXXXXX)"
mnt="$work/mnt"; live="$work/live"; snap="$work/snap"
loop_live=""; loop_snap=""

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
  set +e
  mountpoint -q "$snap" && umount "$snap"
  [ -n "$loop_snap" ] && losetup -d "$loop_snap" 2>/dev/null
  mountpoint -q "$live" && umount "$live"
  [ -n "$loop_live" ] && losetup -d "$loop_live" 2>/dev/null
  mountpoint -q "$mnt" && $blksnapfs umount "$mnt"
  rm -rf "$work"
}
trap cleanup EXIT

step "Make a 512 MiB disk image with an ext4 file system"
truncate -s 512M "$work/disk.img"
mkfs.ext4 -q -F "$work/disk.img"
mkdir -p "$mnt" "$live" "$snap"

step "mount.blksnapfs disk.img $mnt"
$mount_helper "$work/disk.img" "$mnt" -o diff_storage="$work/disk.diff",diff_size=256M,log="$work/daemon.log"
ls -l "$mnt"

step "A live file system on /origin (loop device), with files in it"
loop_live=$(losetup -f --show "$mnt/origin")
mount "$loop_live" "$live"
for i in 1 2 3 4; do head -c 8M /dev/urandom > "$live/data$i.bin"; done
cp -r "$here/src" "$live/src"
sync -f "$live"
(cd "$live" && find . -type f -exec sha256sum {} + | sort -k2) > "$work/at-snapshot.sha"
echo "wrote $(du -sh "$live" | cut -f1) of files"

step "Take a snapshot (fsfreeze for a clean point in time, then mkdir)"
fsfreeze -f "$live"; mkdir "$mnt/snapshots/nightly"; fsfreeze -u "$live"
cat "$mnt/snapshots/nightly/info"

step "Keep changing the live file system"
for i in 1 2 3 4; do head -c 8M /dev/urandom > "$live/data$i.bin"; done
rm -rf "$live/src"
sync -f "$live"
$blksnapfs status "$mnt"

step "Back the snapshot up with dd, and check it is the file system as it was"
dd if="$mnt/snapshots/nightly/image" of="$work/backup.img" bs=1M status=none
e2fsck -fn "$work/backup.img" >/dev/null 2>&1 && echo "backup.img: e2fsck clean"
cmp "$work/backup.img" "$mnt/snapshots/nightly/image" && echo "backup.img equals the snapshot image"

step "Loop-mount the snapshot read-only and compare every file"
loop_snap=$(losetup -r -f --show "$mnt/snapshots/nightly/image")
mount -o ro,noload "$loop_snap" "$snap"
(cd "$snap" && find . -type f ! -path './lost+found/*' -exec sha256sum {} + | sort -k2) > "$work/in-snapshot.sha"
diff "$work/at-snapshot.sha" "$work/in-snapshot.sha" && echo "all $(wc -l < "$work/at-snapshot.sha") files in the snapshot match what was there at snapshot time"
umount "$snap"; losetup -d "$loop_snap"; loop_snap=""

step "Destroy the snapshot and unmount"
rmdir "$mnt/snapshots/nightly"
umount "$live"; losetup -d "$loop_live"; loop_live=""
$blksnapfs umount "$mnt"
echo "events seen by the daemon:"
grep -o '"type":"[a-z-]*","snapshot":"[a-z]*"' "$work/daemon.log" | sed 's/^/  /' || true

step "Done: the demo ran end to end"
