#!/usr/bin/env bash
# Installs Dawn (WebGPU native) for linux x64 — npm bun-webgpu-linux-x64, pinned in tools/webgpu/package-lock.json —
# into .tapml/webgpu (git-ignored). The webgpu platform loads .tapml/webgpu/node_modules/bun-webgpu-linux-x64/
# libwebgpu_wrapper.so (or $TAPML_WEBGPU_LIB). Idempotent: does nothing when that lockfile is already installed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/tools/webgpu"
dest="$root/.tapml/webgpu"
if ! command -v npm >/dev/null 2>&1; then
  echo "fetch-webgpu: npm is not on PATH; install Node.js and npm (apt-get install npm)" >&2
  exit 2
fi
if [ -f "$dest/node_modules/.package-lock.json" ] && cmp -s "$src/package-lock.json" "$dest/package-lock.json"; then
  exit 0
fi
mkdir -p "$dest"
cp "$src/package.json" "$src/package-lock.json" "$dest/"
npm ci --prefix "$dest" --no-audit --no-fund --loglevel=error
echo "fetch-webgpu: installed into ${dest#"$root/"}"
