#!/usr/bin/env bash
# Installs what the tests need, runs the whole test suite, and ends with `N passed, N failed, N skipped`.
# Tests that read ../shared (ONNX conformance data, models) skip with a message when it is absent.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh || exit 2
log="$(mktemp)"
dotnet test --project tests/Tapml.Tests -c Release --no-progress 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
passed=$(grep -E '^\s+succeeded: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+')
failed=$(grep -E '^\s+failed: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+')
skipped=$(grep -E '^\s+skipped: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+')
rm -f "$log"
if [ -z "$passed" ]; then echo "0 passed, 1 failed, 0 skipped"; exit 1; fi
[ "$rc" -ne 0 ] && [ "${failed:-0}" -eq 0 ] && failed=1   # the run itself failed (build error, crash)
echo "${passed} passed, ${failed:-0} failed, ${skipped:-0} skipped"
exit $rc
