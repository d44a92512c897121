#!/usr/bin/env bash
# Builds .device/ (git-ignored) for the GPU machine, which has no .NET SDK, node, Vulkan loader or network:
#   bin/tapml                  self-contained single-file tapml, compressed, libonnxruntime.so bundled and
#                              self-extracted; partially trimmed (TrimMode=partial: the framework's assemblies are
#                              trimmed, tapml's own never are, since its op registry and JSON use reflection): 33 MB,
#                              was 65 MB untrimmed with ASP.NET Core (checked here: platforms, cpu/onnxruntime/webgpu
#                              generate, serve + remote generate/replay, browser, conformance, debug --demo)
#   lib/libwebgpu_wrapper.so.gz  Dawn, stripped, gzipped (16.7 MB stripped would push the folder past 60 MiB)
#   debs/*.deb                 Debian 12 libvulkan1 + libglvnd (libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
#                              + glslc and libshaderc1 (the vulkan platform compiles its GLSL kernels with glslc)
#                              + ocl-icd-libopencl1 (the OpenCL ICD loader, for NVIDIA's OpenCL library there)
#   setup-remote.sh            makes those usable there, then execs its arguments
#   run.sh                     scripts/device-run.sh (older entry point: runs bin/tapml "$@")
# Then, device `run` with carry [".device"] and command e.g.
#   bash .device/setup-remote.sh .device/bin/tapml platforms
# The build uses its own artifacts folder (.tapml/device-artifacts), never the projects' obj/ and bin/.
# Options (environment): DEVICE_BUNDLE_MAX_MIB (default 60) fails the build when the folder is larger.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
max_mib="${DEVICE_BUNDLE_MAX_MIB:-60}"
dawn=.tapml/webgpu/node_modules/bun-webgpu-linux-x64/libwebgpu_wrapper.so
debs=(libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 glslc libshaderc1 ocl-icd-libopencl1)

if command -v npm >/dev/null 2>&1; then bash scripts/fetch-webgpu.sh   # idempotent; pins the Dawn build
elif [ ! -f "$dawn" ]; then echo "device-bundle: $dawn is missing and npm is not on PATH (scripts/fetch-webgpu.sh)" >&2; exit 2
fi

stage="$(mktemp -d "${TMPDIR:-/tmp}/tapml-device.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib" "$stage/debs"

echo "device-bundle: publishing src/Tapml.Cli (linux-x64, self-contained, single file)"
dotnet publish src/Tapml.Cli -c Release -r linux-x64 --self-contained \
  -p:PublishSingleFile=true -p:InvariantGlobalization=true -p:IncludeNativeLibrariesForSelfExtract=true \
  -p:EnableCompressionInSingleFile=true -p:PublishTrimmed=true -p:TrimMode=partial -p:SuppressTrimAnalysisWarnings=true --artifacts-path .tapml/device-artifacts -o "$stage/bin" -nologo -v quiet
rm -f "$stage"/bin/*.pdb
extra="$(find "$stage/bin" -type f ! -name tapml)"
if [ -n "$extra" ]; then echo "device-bundle: unexpected files beside tapml (not bundled):" $extra >&2; exit 1; fi

strip -o "$stage/lib/libwebgpu_wrapper.so" "$dawn"
gzip -9n "$stage/lib/libwebgpu_wrapper.so"

# The .debs: Debian's amd64 builds, whatever this machine's architecture; with a private package list if this
# machine's lists are missing or another architecture's (as ../.library/device/README.md does it).
if [ "$(dpkg --print-architecture 2>/dev/null)" != amd64 ] || ! (cd "$stage/debs" && apt-get download -q "${debs[@]}" >/dev/null 2>&1); then
  lists="$(mktemp -d "${TMPDIR:-/tmp}/tapml-apt.XXXXXX")"; mkdir -p "$lists/partial"
  o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 "-oDir::State::Lists=$lists")
  apt-get "${o[@]}" update -q >/dev/null
  (cd "$stage/debs" && apt-get "${o[@]}" download -q "${debs[@]}" >/dev/null)
  rm -rf "$lists"
fi
[ "$(ls "$stage"/debs/*.deb | wc -l)" = "${#debs[@]}" ] || { echo "device-bundle: expected ${#debs[@]} .deb files" >&2; exit 1; }

cat > "$stage/setup-remote.sh" <<'EOF'
#!/usr/bin/env bash
# Run on the GPU machine (no .NET SDK, node or Vulkan loader), from any folder:
#   bash .device/setup-remote.sh .device/bin/tapml platforms
# Makes the carried Vulkan loader and Dawn usable, then execs its arguments. It writes nothing inside .device
# (the device tool carries that folder, under a size limit): unpacked files go to $TAPML_DEVICE_STATE
# (default /tmp/tapml-device). The NVIDIA Vulkan ICD is found where the machine has it (/usr/share/vulkan/icd.d).
# TAPML_DEVICE_LOADER: auto (default: nothing when ldconfig already knows libvulkan.so.1; else as root, as verified
# on the H100, `dpkg -x` the .debs into / and run ldconfig; else unpack beside and use LD_LIBRARY_PATH),
# system, local, or none.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${TAPML_DEVICE_STATE:-/tmp/tapml-device}"
[ $# -gt 0 ] || { echo "usage: bash ${BASH_SOURCE[0]} COMMAND [ARGS...]  (e.g. .device/bin/tapml platforms)" >&2; exit 2; }
mkdir -p "$state"

# Dawn: unpacked once per distinct .gz.
gz="$here/lib/libwebgpu_wrapper.so.gz"
sum="$(cksum < "$gz" | cut -d' ' -f1)"
lib="$state/dawn-$sum/libwebgpu_wrapper.so"
if [ ! -f "$lib" ]; then
  mkdir -p "${lib%/*}"; gunzip -c "$gz" > "$lib.$$"; chmod 755 "$lib.$$"; mv -f "$lib.$$" "$lib"
fi
export TAPML_WEBGPU_LIB="$lib"

# Vulkan loader (libvulkan1) and GL dispatch (libglvnd) from the carried Debian 12 packages.
ldc="$(command -v ldconfig || echo /sbin/ldconfig)"
known() { local c; c="$("$ldc" -p 2>/dev/null || true)"; [[ $c == *"libvulkan.so.1 "* ]]; }   # no grep -q: pipefail
mode="${TAPML_DEVICE_LOADER:-auto}"
if [ "$mode" = auto ]; then
  if known; then mode=none; elif [ "$(id -u)" = 0 ]; then mode=system; else mode=local; fi
fi
case "$mode" in
  none) ;;
  system)
    for d in "$here"/debs/*.deb; do dpkg -x "$d" /; done
    "$ldc" ;;
  local)
    sys="$state/root"
    if [ ! -e "$sys/usr/lib/x86_64-linux-gnu/libvulkan.so.1" ]; then
      mkdir -p "$sys"; for d in "$here"/debs/*.deb; do dpkg -x "$d" "$sys"; done
    fi
    export LD_LIBRARY_PATH="$sys/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
  *) echo "setup-remote: TAPML_DEVICE_LOADER=$mode (expected auto, system, local or none)" >&2; exit 2 ;;
esac

# glslc (vulkan's GLSL → SPIR-V) where the machine has none and the loader step did not unpack it.
if ! command -v glslc >/dev/null 2>&1; then
  gl="$state/glslc"
  if [ ! -x "$gl/usr/bin/glslc" ]; then mkdir -p "$gl"; for d in "$here"/debs/glslc_*.deb "$here"/debs/libshaderc1_*.deb; do dpkg -x "$d" "$gl"; done; fi
  export TAPML_GLSLC="$gl/usr/bin/glslc"
  export LD_LIBRARY_PATH="$gl/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

# Only where the usual folders hold no NVIDIA ICD but the driver's mount does (../.library/device/README.md).
if ! ls /usr/share/vulkan/icd.d/nvidia* /etc/vulkan/icd.d/nvidia* >/dev/null 2>&1 && [ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ] \
   && [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  [ -f /usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json ] && \
    export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi

# OpenCL: the ICD loader where the machine has none, and NVIDIA's library as the vendor where the driver mount has it
# (/etc/OpenCL/vendors there lists only PoCL). TAPML_DEVICE_OPENCL=keep leaves OCL_ICD_VENDORS alone.
if ! "$ldc" -p 2>/dev/null | tr -s ' ' | cut -d' ' -f2 | tr '\n' ' ' | { read -r l; [[ " $l " == *" libOpenCL.so.1 "* ]]; }; then
  oc="$state/ocl-icd"
  if [ ! -e "$oc/usr/lib/x86_64-linux-gnu/libOpenCL.so.1" ]; then mkdir -p "$oc"; dpkg -x "$here"/debs/ocl-icd-libopencl1_*.deb "$oc"; fi
  export LD_LIBRARY_PATH="$oc/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if [ "${TAPML_DEVICE_OPENCL:-}" != keep ] && [ -z "${OCL_ICD_VENDORS:-}" ] && [ -f /usr/local/nvidia/lib64/libnvidia-opencl.so.1 ]; then
  mkdir -p "$state/ocl-vendors"
  echo /usr/local/nvidia/lib64/libnvidia-opencl.so.1 > "$state/ocl-vendors/nvidia.icd"
  for f in /etc/OpenCL/vendors/*.icd; do [ -f "$f" ] && cp -f "$f" "$state/ocl-vendors/"; done
  export OCL_ICD_VENDORS="$state/ocl-vendors"
fi

mkdir -p "$state/xdg" "$state/bundle"; chmod 700 "$state/xdg"
export XDG_RUNTIME_DIR="$state/xdg"
export DOTNET_BUNDLE_EXTRACT_BASE_DIR="${DOTNET_BUNDLE_EXTRACT_BASE_DIR:-$state/bundle}"   # libonnxruntime.so
echo "setup-remote: loader $mode; TAPML_WEBGPU_LIB=$TAPML_WEBGPU_LIB${VK_DRIVER_FILES:+; VK_DRIVER_FILES=$VK_DRIVER_FILES}${OCL_ICD_VENDORS:+; OCL_ICD_VENDORS=$OCL_ICD_VENDORS}" >&2
exec "$@"
EOF
chmod +x "$stage/setup-remote.sh"
cp scripts/device-run.sh "$stage/run.sh"; chmod +x "$stage/run.sh"
{ echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (src modified)')"; date -u +"built %Y-%m-%dT%H:%M:%SZ"; } > "$stage/BUILD"

rm -rf .device
cp -a "$stage" .device
chmod 755 .device
kib="$(du -sk .device | cut -f1)"
du -sh .device
if [ "$kib" -gt $((max_mib * 1024)) ]; then
  echo "device-bundle: .device is $((kib / 1024)) MiB, over ${max_mib} MiB (the device tool carries 64 MiB with the tree)" >&2; exit 1
fi
