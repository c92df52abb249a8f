#!/usr/bin/env bash
# Incremental backups of a blksnapfs origin with `blksnapfs backup`.
#
#   examples/incremental-backup.sh MOUNT BACKUP_DIR
#
# Each round takes a snapshot, backs it up into BACKUP_DIR/disk.img and destroys it.
# The first round (no manifest yet) is a full backup; later ones pass the previous
# manifest, so only the blocks changed since are copied; if the change-tracking
# generation changed, blksnapfs falls back to a full backup and says so.
# `blksnapfs backup` writes TARGET.partial and renames it at the end, and verifies
# what it copied: an interrupted round leaves the previous disk.img and its manifest
# as they were (check with `blksnapfs verify-backup BACKUP_DIR/disk.img.manifest.json`).
#
# Run it from cron or a systemd timer, or let it loop: ROUNDS=24 INTERVAL=3600.
set -euo pipefail

BLKSNAPFS=${BLKSNAPFS:-$(command -v blksnapfs || echo "$(cd "$(dirname "$0")/.." && pwd)/bin/blksnapfs.js")}
mnt=${1:?usage: incremental-backup.sh MOUNT BACKUP_DIR}
dir=${2:?usage: incremental-backup.sh MOUNT BACKUP_DIR}
rounds=${ROUNDS:-1}
interval=${INTERVAL:-0}
target="$dir/disk.img"
manifest="$target.manifest.json"

snap=
cleanup() { if [ -n "$snap" ]; then rmdir "$mnt/snapshots/$snap" 2>/dev/null || true; fi; }
trap cleanup EXIT

mkdir -p "$dir"
for ((round = 1; round <= rounds; round++)); do
  snap="bk-$(date +%Y%m%d-%H%M%S)-$$-$round"
  mkdir "$mnt/snapshots/$snap"
  since=()
  if [ -f "$manifest" ]; then since=(--since-manifest "$manifest"); fi
  "$BLKSNAPFS" backup "$mnt" "$snap" "$target" "${since[@]}"
  rmdir "$mnt/snapshots/$snap"
  snap=
  if ((round < rounds)); then sleep "$interval"; fi
done
