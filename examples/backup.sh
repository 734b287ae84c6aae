#!/usr/bin/env bash
# Backs up a running process into a tar file and lets it run on (or, with --kill, ends it).
#   examples/backup.sh PID OUT.tar [--kill]
# Uses the mount CKPTFS_MOUNT if set, or mounts one in a temporary directory for the duration.
# The process is never lost: it is killed only once OUT.tar is complete, and a process that
# cannot be restored is refused (the checkpoint fails) and runs on.
set -euo pipefail
pid=${1:?usage: backup.sh PID OUT.tar [--kill]}
out=${2:?usage: backup.sh PID OUT.tar [--kill]}
ending=resume
[ "${3:-}" = --kill ] && ending=kill
ckptfs=${CKPTFS:-ckptfs}

mnt=${CKPTFS_MOUNT:-}
own=
if [ -z "$mnt" ]; then
  own=$(mktemp -d)
  mnt=$own/mnt
  "$ckptfs" mount "$mnt"
fi
# If anything below fails while the process is frozen, it is resumed (a checkpoint that
# cannot be restored fails, but stays open for inspection: it is resumed too).
dir=
ended=
cleanup() {
  if [ -n "$dir" ] && [ -z "$ended" ]; then echo resume > "$dir/done" || true; rm -f "$out.part"; fi
  if [ -n "$own" ]; then "$ckptfs" umount "$mnt"; rm -rf "$own"; fi
}
trap cleanup EXIT

dir=$("$ckptfs" checkpoint "$pid" --mount "$mnt")
# tar reads every file at the size stat gives, so the archive holds the whole tree. It is
# written beside OUT.tar and renamed once complete: a failed backup never replaces a good one.
tar -C "$(dirname "$dir")" -cf "$out.part" "$(basename "$dir")"
mv "$out.part" "$out"
echo "$ending" > "$dir/done"
ended=1
echo "saved $pid to $out ($(du -h "$out" | cut -f1)); the process was told to $ending"
