#!/usr/bin/env bash
# Builds .device/ (git-ignored) for the GPU machine, which has no .NET SDK, node or Vulkan loader: a self-contained
# single-file tapml, the stripped and gzipped Dawn library, Debian's libvulkan1/libglvnd packages, and run.sh
# (scripts/device-run.sh). Then: device `run` with carry [".device"] and command `.device/run.sh bench gpu`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/fetch-webgpu.sh
rm -rf .device && mkdir -p .device/lib .device/debs
dotnet publish src/Tapml.Cli -c Release -r linux-x64 --self-contained -p:PublishSingleFile=true \
  -p:IncludeNativeLibrariesForSelfExtract=true -p:EnableCompressionInSingleFile=true -o .device/bin -v quiet -nologo
rm -f .device/bin/*.pdb
strip -o .device/lib/libwebgpu_wrapper.so .tapml/webgpu/node_modules/bun-webgpu-linux-x64/libwebgpu_wrapper.so
gzip -9 .device/lib/libwebgpu_wrapper.so
(cd .device/debs && apt-get download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
cp scripts/device-run.sh .device/run.sh
du -sh .device
