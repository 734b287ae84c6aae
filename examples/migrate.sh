#!/usr/bin/env bash
# Moves a running process to another directory tree or machine of the same kind (same kernel,
# same files at the same paths): checkpoint, copy the image over ssh, end the original,
# restore there. With HOST "local" it only round-trips through an image file here.
#   examples/migrate.sh PID HOST
set -euo pipefail
pid=${1:?usage: migrate.sh PID HOST}
host=${2:?usage: migrate.sh PID HOST}
ckptfs=${CKPTFS:-ckptfs}
work=$(mktemp -d)
mnt=$work/mnt
"$ckptfs" mount "$mnt"
trap '"$ckptfs" umount "$mnt"; rm -rf "$work"' EXIT

dir=$("$ckptfs" checkpoint "$pid" --mount "$mnt")
cp "$dir.image" "$work/$pid.img"          # the condensed image: one file, streamed from the frozen task
echo kill > "$dir/done"                    # the original ends without running again
if [ "$host" = local ]; then
  "$ckptfs" restore "$work/$pid.img" --mount "$mnt"
else
  scp -q "$work/$pid.img" "$host:/tmp/$pid.img"
  ssh "$host" "ckptfs restore /tmp/$pid.img && rm -f /tmp/$pid.img"
fi
