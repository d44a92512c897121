#!/usr/bin/env bash
# The GPU-machine benchmark set in one device call, most important first, each section under its own time limit
# and all of them under one deadline (a device command may run 10 minutes). Build the bundle first
# (`bash scripts/device-bundle.sh`), then device `run` with carry [".device"] (add ".tapml/dm1" for the real-model
# profiles: the .onnx files of ocr-det, silero-vad-v5, oww-hey-jarvis, ocr-rec and their inputs from
# tools/models/make-inputs.py) and command `bash scripts/gpu-bench.sh`.
# Output: a filtered summary on stdout, everything in $OUT/gpu-bench.log.
# Environment: GPU_BENCH_SECONDS (default 540), GPU_BENCH_ONLY (space-separated section names).
set -u
T="bash .device/setup-remote.sh .device/bin/tapml"
out="${OUT:-/tmp}"; log="$out/gpu-bench.log"; : > "$log"
deadline=$(( $(date +%s) + ${GPU_BENCH_SECONDS:-540} ))
keep='^(load |bench |peer: |carve ÷|decode|prefill|ran |outputs |GPU time|vulkan stats|  )|tokens/s|×|ratio|share|TFLOP|GB/s|MB/s|round trip|lockstep|bisect|error|Error'

section() {
  local name=$1 limit=$2; shift 2
  if [ -n "${GPU_BENCH_ONLY:-}" ] && [[ " $GPU_BENCH_ONLY " != *" $name "* ]]; then return; fi
  local left=$(( deadline - $(date +%s) ))
  if [ "$left" -lt 20 ]; then echo "=== $name: skipped (deadline)" | tee -a "$log"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (limit ${limit}s, $(date +%T))" | tee -a "$log"
  timeout "$limit" bash -c "$*" >>"$log" 2>&1; local rc=$?
  [ $rc -eq 124 ] && echo "    (cut at ${limit}s)" | tee -a "$log"
  awk -v from="=== $name (" 'index($0, from) == 1 { on = 1; next } on' "$log" | grep -E "$keep" | grep -vE '^[│┌└├╭╰─ ]*$' | cut -c1-220 | head -40
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$log"
# Issue 24: f32, f16 (--weights f16 over the f16 copy) q4 and q4-unfused decode and prefill on the 125M and 4-layer 8B-shape
# checkpoints (webgpu, one process).
section llm-weights 330 "$T bench llm-weights --platform webgpu --runs 3"
# PyTorch/transformers on the same checkpoints (the folders bench wrote), eager, f32 and f16.
section peer-eager 100 "python3 tools/bench/torch_llm.py --model /tmp/tapml-bench-llama-125m --prompt 64 --new 33 --mode eager;
  python3 tools/bench/torch_llm.py --model /tmp/tapml-bench-llama-4x4096 --prompt 16 --new 17 --mode eager;
  python3 tools/bench/torch_llm.py --model /tmp/tapml-bench-llama-125m-f16 --dtype float16 --prompt 64 --new 33 --mode eager;
  python3 tools/bench/torch_llm.py --model /tmp/tapml-bench-llama-4x4096-f16 --dtype float16 --prompt 16 --new 17 --mode eager"
# torch.compile (reduce-overhead: CUDA graphs, static cache) on the 125M, in the same call as llm-weights.
section peer-compile 150 "python3 tools/bench/torch_llm.py --model /tmp/tapml-bench-llama-125m --prompt 64 --new 33 --mode compile"
# Issue 19: loopback remote (cpu served).
section remote 50 "$T bench remote --runs 5"
# Issue 24: decode at 32 vs 2,000 steps (KV cache in place), 1,024-token prefill.
section llm-long 130 "$T bench llm-long --platform webgpu --runs 2"
# Issue 24 prefill: the same llm-q4 with the earlier prefill path (tiled products for short prompts, first tile ladder)
# against the llm-q4 section above (skinny products, ladder v2), then the skinny kernel's layouts per product shape.
section prefill-before 120 "$T bench llm-q4 --platform 'webgpu?skinny-m=0&matmul-ladder=v1' --runs 3"
section skinny-sweep 150 "$T bench skinny-sweep --platform webgpu --runs 2"
# Issue 21: the same 125M decode on webgpu and vulkan (and ORT/cpu) in this call.
section llm-webgpu 50 "$T bench llm --platform webgpu --runs 3"
section llm-vulkan 50 "TAPML_VULKAN_STATS=1 $T bench llm --platform vulkan --runs 3"
# Issue 24 cold start: load and time to first token of fresh processes: the first fills the model's kernel list, the
# second compiles from it in parallel, the third with kernel-cache=off (the driver's own shader cache warm in both).
section cold 60 "for p in webgpu webgpu 'webgpu?kernel-cache=off'; do $T generate --model /tmp/tapml-bench-llama-125m --platform \"\$p\" --input-ids 1,2,3,4,5,6,7,8 --max-tokens 8; done;
  [ -d /tmp/tapml-bench-llama-4x4096 ] && for p in webgpu webgpu 'webgpu?kernel-cache=off'; do $T generate --model /tmp/tapml-bench-llama-4x4096 --platform \"\$p\" --input-ids 1,2,3,4 --max-tokens 4; done"
# Issue 21: the 1.1B shape (four layers of Llama-3-8B's) on both, and the isolated matrix-vector kernels on vulkan.
section large-webgpu 100 "$T bench llm-large --platform webgpu --runs 3"
# Issue 24's 3x: q4 decode of the 8B shape with the rule's nibbles (f16 subnormals where the probe passes) against the
# magic-number nibbles, alternating, f32 in the same call (GPU_BENCH_ONLY=q4-nibbles for this alone).
section q4-nibbles 240 "W='webgpu?toggles=-timestamp_quantization';
  for p in \"\$W\" \"\$W&q4-nibbles=magic\" \"\$W\" \"\$W&q4-nibbles=magic\"; do $T bench llm-large --quantize q4 --runs 5 --platform \"\$p\"; done;
  $T bench llm-large --runs 5 --platform \"\$W\""
# Issue 24's 3x: the KV append in the q/k/v projection kernel against the rule (apart), alternating, then f32 both ways
# in the same call (GPU_BENCH_ONLY=kv-projections for this alone).
section kv-projections 280 "W='webgpu?toggles=-timestamp_quantization';
  for p in \"\$W&kv-append=projections\" \"\$W\" \"\$W&kv-append=projections\" \"\$W\"; do $T bench llm-large --quantize q4 --runs 5 --platform \"\$p\"; done;
  for p in \"\$W\" \"\$W&kv-append=projections\"; do $T bench llm-large --runs 5 --platform \"\$p\"; done"
# Issue 24's 3x: prefetch=on (the attention reads o_proj's weights into L2) against the rule, alternating in one process,
# then the q4 layout knobs the rule has not been measured against since half nibbles and the KV append in the
# projections (all on the same weights: bench llm-large takes specs separated by ';'), and f32 in the same call.
section prefetch 200 "W='webgpu?toggles=-timestamp_quantization';
  $T bench llm-large --quantize q4 --runs 5 --platform \"\$W;\$W&prefetch=on;\$W;\$W&prefetch=on\";
  $T bench llm-large --runs 5 --platform \"\$W;\$W&prefetch=on\""
section q4-tune 300 "W='webgpu?toggles=-timestamp_quantization';
  $T bench llm-large --quantize q4 --runs 5 --platform \"\$W;\$W&q4-target=131072;\$W&q4-target=262144;\$W&q4-unroll=2;\$W&q4-rows=2;\$W&q4-threads=32;\$W;\$W&q4-wg=256;\$W&q4-wg=64;\$W&q4-threads=32&q4-target=131072;\$W&q4-unroll=2&q4-target=131072;\$W&q4-reduce=tree;\$W\""
# Issue 24's 3x: one-row q4 products at two rows a thread (the rule since the eighteenth session) against the old four
# (q4-decode-target=65536), alternating in one process, f32 in the same call; then a host profile of the q4 decode
# (EventPipe's sample profiler; here: dotnet-trace convert --format speedscope, then tools/bench/speedscope_top.py).
section decode-target 240 "W='webgpu?toggles=-timestamp_quantization';
  $T bench llm-large --quantize q4 --runs 5 --platform \"\$W;\$W&q4-decode-target=65536;\$W;\$W&q4-decode-target=65536;\$W\";
  $T bench llm-large --runs 5 --platform \"\$W\""
section host-trace 100 "DOTNET_EnableEventPipe=1 DOTNET_EventPipeOutputPath=$out/q4-host.nettrace \
  DOTNET_EventPipeConfig='Microsoft-DotNETCore-SampleProfiler:0:5,Microsoft-Windows-DotNETRuntime:0x4c14fccbd:5' \
  $T bench llm-large --quantize q4 --runs 60 --platform 'webgpu?toggles=-timestamp_quantization'; gzip -1f $out/q4-host.nettrace"
section large-vulkan 100 "TAPML_VULKAN_STATS=1 $T bench llm-large --platform vulkan --runs 3"
section gpu-vulkan 80 "$T bench gpu --platform vulkan --runs 3"
section gpu-webgpu 80 "$T bench gpu --platform webgpu --runs 3"
# Issue 23: per-op-family GPU time of real models.
section profiles 50 "for n in ocr-det silero-vad-v5 oww-hey-jarvis ocr-rec; do [ -f .tapml/dm1/\$n.onnx ] || continue;
  $T run --model .tapml/dm1/\$n.onnx --platform webgpu --inputs .tapml/dm1/in-\$n --profile --compare cpu; done"
section llm-opencl 50 "$T bench llm --platform opencl --runs 3"
section matmul-sweep 180 "$T bench matmul-sweep --platform webgpu --runs 2"
echo "=== done $(date +%T)" | tee -a "$log"
