#!/usr/bin/env bash
# Moves a running process to another directory tree or machine of the same kind (same kernel,
# same files at the same paths): checkpoint, copy the image there, end the original, restore
# there. With HOST "local" it only round-trips through an image file here.
#   examples/migrate.sh PID HOST
# The process is never lost: nothing ends it before its image is saved where it will be
# restored, and if the restore fails the image is kept (the path is printed) for a retry with
# `ckptfs restore IMAGE`. A process that cannot be restored is left running.
set -euo pipefail
pid=${1:?usage: migrate.sh PID HOST}
host=${2:?usage: migrate.sh PID HOST}
ckptfs=${CKPTFS:-ckptfs}
work=$(mktemp -d)
mnt=$work/mnt
image=$work/$pid.img
restored=
cleanup() {
  # Unmounting resumes the process if it is still frozen (any failure before the kill).
  "$ckptfs" umount "$mnt" || true
  if [ -n "$restored" ] || [ ! -e "$image" ]; then
    rm -rf "$work"
  else
    rmdir "$mnt" 2>/dev/null || true
    echo "migrate.sh: the restore did not finish; the image is kept in $image (ckptfs restore $image)" >&2
  fi
}
"$ckptfs" mount "$mnt"
trap cleanup EXIT

# Refused (non-zero) if the process could not be restored: it then resumes at the unmount.
dir=$("$ckptfs" checkpoint "$pid" --mount "$mnt")
cp "$dir.image" "$image.part"             # the condensed image: one file, streamed from the frozen task
mv "$image.part" "$image"                  # complete, so kept if anything below fails
if [ "$host" != local ]; then
  scp -q "$image" "$host:/tmp/$pid.img"    # copied there before the original ends
fi
echo kill > "$dir/done"                    # returns once the original is dead
if [ "$host" = local ]; then
  # The restore waits for the killed original's PID to be reaped (up to 10 s).
  "$ckptfs" restore "$image" --mount "$mnt"
else
  ssh "$host" "ckptfs restore /tmp/$pid.img && rm -f /tmp/$pid.img"
fi
restored=1
