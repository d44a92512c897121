#!/usr/bin/env bash
# The MLP grid behind docs/dgrab.md, made on a 16-core machine without .NET: run from a folder holding a
# self-contained dgrab (dotnet publish src/DGrab.Cli -c Release -r linux-x64 --self-contained
# -p:PublishSingleFile=true -p:PublishTrimmed=true -p:EnableCompressionInSingleFile=true -o DIR) and the four
# Fashion-MNIST .gz files; writes into $OUT. The herding simulation and the logreg grid ran on the 2-core machine.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")"
OUT="${OUT:-out}"; mkdir -p "$OUT"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)" | tee "$OUT/summary.txt"
t1=$(date +%s)
# NOTE: cut off at 7 minutes (the device time is shared); a cut-off run writes nothing, the log shows how far it got.
timeout 420 ./dgrab train --data . --model mlp --order cd-grab,id-grab-bal,id-grab-pairbal,d-rr --workers 4 --batch 16 \
  --lr 0.001,0.005,0.01 --epochs 30 --seed 0,1,2 --json "$OUT/mlp.json" --plot "$OUT/mlp.svg" >>"$OUT/summary.txt" 2>>"$OUT/progress.log"
rc=$?; t2=$(date +%s); echo "mlp grid: $((t2 - t1)) s (exit $rc)" | tee -a "$OUT/summary.txt"
cat "$OUT/summary.txt"
