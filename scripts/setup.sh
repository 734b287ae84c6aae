#!/usr/bin/env bash
# Makes a fresh Debian machine ready to run ckptfs: system packages, npm packages, the native
# helper and the TypeScript build. Each step runs only when its result is missing or stale,
# so every README command can start with it.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
ldconfig -p | grep -q 'libfuse\.so\.2 ' || missing+=(libfuse2)
command -v fusermount >/dev/null || missing+=(fuse)
command -v gcc >/dev/null && command -v make >/dev/null || missing+=(build-essential)
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]} with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -e /dev/fuse ] || modprobe fuse

# npm decides by its configuration whether install scripts run; build the addon explicitly.
if [ ! -e node_modules/.package-lock.json ] || [ package.json -nt node_modules/.package-lock.json ]; then
  npm install --no-audit --no-fund --ignore-scripts >&2
fi
# Two products: the Node-API module and the restorer stub; a failed build may leave one alone.
stale=
for product in addon/build/Release/ckptfs.node addon/build/Release/restorer; do
  if [ ! -e "$product" ] || [ -n "$(find addon/src addon/stub addon/binding.gyp -newer "$product" 2>/dev/null | head -n1)" ]; then stale=1; fi
done
if [ -n "$stale" ]; then
  npx --no-install node-gyp rebuild --directory=addon >/dev/null 2>addon-build.log || { cat addon-build.log >&2; exit 1; }
  rm -f addon-build.log
fi
# TypeScript: compiled only when a source, the configuration or the installed packages changed
# since the last build that succeeded. The stamp is taken before tsc starts (an edit made while
# it runs makes the next run compile again) and kept only if tsc succeeds (a failed build is
# never mistaken for a finished one; tsc writes dist/.tsbuildinfo even when it fails).
stamp=dist/.setup-tsc-ok
# Directories count too: a removed or renamed source changes its directory's time.
if [ ! -e "$stamp" ] || [ ! -e dist/mount/cli.js ] ||
  [ -n "$(find lib mount bench addon/index.d.ts tsconfig.json package.json node_modules/.package-lock.json -newer "$stamp" \( -name '*.ts' -o -name '*.json' -o -type d \) 2>/dev/null | head -n1)" ]; then
  echo "setup: compiling the TypeScript" >&2
  mkdir -p dist
  rm -f "$stamp"
  # tsc's incremental record does not notice outputs removed by hand: without them, start over.
  [ -e dist/mount/cli.js ] || rm -f dist/.tsbuildinfo
  touch "$stamp.new"
  npx --no-install tsc -p .
  mv "$stamp.new" "$stamp"
fi
