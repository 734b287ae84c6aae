#!/usr/bin/env bash
# Restores a process saved by backup.sh (a tar of a checkpoint tree), or a saved tree
# directory, or an image file. Prints the restored PID. Never removes what it is given (a
# tar is unpacked into a temporary directory, which is removed).
#   examples/restore.sh SAVED.tar|SAVED_DIR|IMAGE
# Uses the mount CKPTFS_MOUNT if set, or mounts one in a temporary directory for the duration.
set -euo pipefail
saved=${1:?usage: restore.sh SAVED.tar|SAVED_DIR|IMAGE}
ckptfs=${CKPTFS:-ckptfs}
work=$(mktemp -d)
mnt=${CKPTFS_MOUNT:-}
own_mount=
if [ -z "$mnt" ]; then
  mnt=$work/mnt
  "$ckptfs" mount "$mnt"
  own_mount=1
fi
cleanup() { if [ -n "$own_mount" ]; then "$ckptfs" umount "$mnt"; fi; rm -rf "$work"; }
trap cleanup EXIT

case "$saved" in
  *.tar)
    tar -C "$work" -xf "$saved"
    saved=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'checkpoint-*' | head -n1)
    ;;
esac
# The restored process is not a child of the server: unmounting afterwards does not harm it.
"$ckptfs" restore "$saved" --mount "$mnt"
