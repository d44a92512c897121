#!/usr/bin/env bash
# Runs the published tapml on the GPU machine: unpacks Dawn and the Vulkan loader next to it, then runs "$@".
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root=/tmp/tapml-device
mkdir -p "$root/lib" "$root/xdg"; chmod 700 "$root/xdg"
[ -f "$root/lib/libwebgpu_wrapper.so" ] || gunzip -c "$here/lib/libwebgpu_wrapper.so.gz" > "$root/lib/libwebgpu_wrapper.so"
# As verified in ../shared/PLATFORMS.md §5: unpack the loader and GL dispatch libraries into / and run ldconfig
# (as root), else next to us with LD_LIBRARY_PATH.
if [ "$(id -u)" = 0 ] && [ ! -e /usr/lib/x86_64-linux-gnu/libvulkan.so.1 ]; then
  for d in "$here"/debs/*.deb; do dpkg -x "$d" /; done; ldconfig
else
  for d in "$here"/debs/*.deb; do dpkg -x "$d" "$root/sys"; done
fi
export LD_LIBRARY_PATH="$root/sys/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
export TAPML_WEBGPU_LIB="$root/lib/libwebgpu_wrapper.so" XDG_RUNTIME_DIR="$root/xdg"
exec "$here/bin/tapml" "$@"
