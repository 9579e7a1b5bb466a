#!/usr/bin/env bash
# Fetch models/mobilenet_v2_features.onnx and check it against the pinned sha256.
#
#   models/get-model.sh                 # copy from ${SHARED_MODELS:-../shared/models}
#                                       # (relative paths are taken from the repo root)
#   models/get-model.sh URL             # or download from URL
#   MODEL_URL=URL models/get-model.sh   # same
#
# There is no public, pinned URL for this exact file (it is a float32 ONNX
# conversion of Google's coral test_data mobilenet_v2_1.0_224_quant.tflite,
# see models/README.md), so when no local copy exists you must supply a URL you
# trust, or build an equivalent model yourself. Whatever the source, the file
# must match models/mobilenet_v2_features.onnx.sha256 or this script fails.
#
# The .onnx is git-ignored: never commit it.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

name=mobilenet_v2_features.onnx
dest="models/$name"
sha_file="models/$name.sha256"
shared="${SHARED_MODELS:-../shared/models}"
url="${1:-${MODEL_URL:-}}"

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | awk '{print $1}'
  else
    shasum -a 256 "$1" | awk '{print $1}'
  fi
}

expected="$(awk 'NF {print $1; exit}' "$sha_file")"
[[ "$expected" =~ ^[0-9a-f]{64}$ ]] || { echo "error: no sha256 in $sha_file" >&2; exit 1; }

verify() {
  local got
  got="$(sha256_of "$1")"
  if [[ "$got" != "$expected" ]]; then
    echo "error: sha256 mismatch for $1" >&2
    echo "  expected $expected" >&2
    echo "  got      $got" >&2
    return 1
  fi
}

if [[ -f "$dest" ]] && verify "$dest" 2>/dev/null; then
  echo "$dest already present and verified ($expected)"
  exit 0
fi

tmp="$(mktemp "models/.$name.XXXXXX")"
trap 'rm -f "$tmp"' EXIT

if [[ -f "$shared/$name" ]]; then
  echo "copying $shared/$name"
  cp "$shared/$name" "$tmp"
elif [[ -n "$url" ]]; then
  echo "downloading $url"
  if command -v curl >/dev/null 2>&1; then
    curl --fail --location --silent --show-error --output "$tmp" "$url"
  elif command -v wget >/dev/null 2>&1; then
    wget --quiet --output-document="$tmp" "$url"
  else
    echo "error: need curl or wget to download" >&2
    exit 1
  fi
else
  cat >&2 <<EOF
error: no local copy at $shared/$name and no URL given.
  There is no public pinned download for this exact file. Either
  - point SHARED_MODELS at a folder holding $name, or
  - pass a URL you trust (first argument or MODEL_URL), or
  - build it yourself (see models/README.md, "Provenance"); a rebuilt file will
    differ byte-wise, so update $sha_file deliberately if you do.
EOF
  exit 1
fi

verify "$tmp"
chmod 0644 "$tmp" # mktemp creates 0600
mv -f "$tmp" "$dest"
trap - EXIT
echo "wrote $dest ($(wc -c <"$dest" | tr -d ' ') bytes, sha256 $expected)"
