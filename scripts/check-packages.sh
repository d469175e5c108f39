#!/usr/bin/env bash
# Packs each published package as npm would and checks the tarball: publint (package.json,
# exports, files) and arethetypeswrong (types resolve under node16 ESM and bundler; ESM only).
# Leaves the tarballs in .tmp/pack for scripts/smoke-packages.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.tmp/pack
rm -rf "$out" && mkdir -p "$out"
for pkg in core agent; do
  (cd "packages/$pkg" && pnpm pack --pack-destination "../../$out" >/dev/null)
done
for tgz in "$out"/*.tgz; do
  echo "check-packages: $(basename "$tgz")"
  pnpm exec publint run "$tgz" --strict
  pnpm exec attw "$tgz" --profile esm-only --format ascii
done
