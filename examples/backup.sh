#!/usr/bin/env bash
# Backs up a running process into a tar file and lets it run on (or, with --kill, ends it).
#   examples/backup.sh PID OUT.tar [--kill]
# Uses the one active ckptfs mount, or mounts one in a temporary directory for the duration.
set -euo pipefail
pid=${1:?usage: backup.sh PID OUT.tar [--kill]}
out=${2:?usage: backup.sh PID OUT.tar [--kill]}
ending=resume
[ "${3:-}" = --kill ] && ending=kill
ckptfs=${CKPTFS:-ckptfs}

mnt=$(awk '$3 == "fuse.ckptfs" {print $2}' /proc/mounts | head -n1)
own_mount=
if [ -z "$mnt" ]; then
  mnt=$(mktemp -d)/mnt
  "$ckptfs" mount "$mnt"
  own_mount=1
fi
cleanup() { [ -n "$own_mount" ] && "$ckptfs" umount "$mnt"; }
trap cleanup EXIT

dir=$("$ckptfs" checkpoint "$pid" --mount "$mnt")
# tar reads every file at the size stat gives, so the archive holds the whole tree.
tar -C "$(dirname "$dir")" -cf "$out" "$(basename "$dir")"
echo "$ending" > "$dir/done"
echo "saved $pid to $out ($(du -h "$out" | cut -f1)); the process was told to $ending"
