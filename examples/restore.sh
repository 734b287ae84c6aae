#!/usr/bin/env bash
# Restores a process saved by backup.sh (a tar of a checkpoint tree), or a saved tree
# directory, or an image file. Prints the restored PID.
#   examples/restore.sh SAVED.tar|SAVED_DIR|IMAGE
set -euo pipefail
saved=${1:?usage: restore.sh SAVED.tar|SAVED_DIR|IMAGE}
ckptfs=${CKPTFS:-ckptfs}
work=$(mktemp -d)
own_mount=
mnt=$(awk '$3 == "fuse.ckptfs" {print $2}' /proc/mounts | head -n1)
if [ -z "$mnt" ]; then
  mnt=$work/mnt
  "$ckptfs" mount "$mnt"
  own_mount=1
fi
cleanup() { [ -n "$own_mount" ] && "$ckptfs" umount "$mnt"; rm -rf "$work"; }
trap cleanup EXIT

case "$saved" in
  *.tar)
    tar -C "$work" -xf "$saved"
    saved=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'checkpoint-*' | head -n1)
    ;;
esac
# The restored process is not a child of the server: unmounting afterwards does not harm it.
"$ckptfs" restore "$saved" --mount "$mnt"
