#!/usr/bin/env bash
# Get models/mobilenet_v2_features.onnx and check it against the pinned sha256
# (models/mobilenet_v2_features.onnx.sha256).
#
#   models/get-model.sh --from-source            # build it from its public source: download
#                                                # google-coral/test_data's tflite from the
#                                                # pinned URL, check its pinned sha256, convert
#   models/get-model.sh --from-source TFLITE     # same from a local copy of that file (offline),
#                                                # e.g. ../shared/models/source/mobilenet_v2_1.0_224_quant.tflite
#   models/get-model.sh --setup-converter        # only create/update the converter's venv
#   models/get-model.sh                          # copy from ${SHARED_MODELS:-../shared/models}
#                                                # (relative to the repo root); without a copy
#                                                # there, build from source as --from-source
#   models/get-model.sh URL                      # download the .onnx itself from URL (or MODEL_URL=...)
#
# Options: --out PATH writes the model there instead of models/mobilenet_v2_features.onnx.
# Paths given as arguments are relative to the current directory.
#
# --from-source runs models/tflite_to_onnx.py in its own venv with the pinned
# models/requirements-convert.txt (created on first use, from PyPI, in
# ${CONVERT_VENV:-build/venv-convert}; reinstalled only when the requirements change). The
# conversion is deterministic: its output must be byte for byte the pinned model, and the
# script fails otherwise.
#
# Environment:
#   MODEL_SOURCE_URL  where --from-source downloads the tflite (default: the pinned URL of
#                     models/README.md, "Provenance"; the tests use a local HTTP server)
#   CONVERT_VENV      the converter's venv (default build/venv-convert, relative to the repo root)
#   CONVERT_OFFLINE=1 never install: fail if the venv is missing or stale (the tests set it)
#   PYTHON            the Python that creates the venv (default python3)
#
# The .onnx is git-ignored: never commit it.
set -euo pipefail

caller_dir="$PWD"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

name=mobilenet_v2_features.onnx
source_name=mobilenet_v2_1.0_224_quant.tflite
source_commit=104342d2d3480b3e66203073dac24f4e2dbb4c41
pinned_source_url="https://github.com/google-coral/test_data/raw/$source_commit/$source_name"

# Absolute path of an argument given relative to the caller's directory.
from_caller() {
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "$caller_dir/$1" ;;
  esac
}

mode=copy
url=""
tflite=""
out=""
while (($#)); do
  case "$1" in
    --from-source)
      mode=source
      if [[ $# -gt 1 && "$2" != --* ]]; then
        tflite="$(from_caller "$2")"
        shift
      fi
      ;;
    --setup-converter) mode=setup ;;
    --out)
      [[ $# -gt 1 ]] || { echo "error: --out needs a path" >&2; exit 2; }
      out="$(from_caller "$2")"
      shift
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    --*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) url="$1" ;;
  esac
  shift
done
[[ "$mode" == copy && -z "$url" ]] && url="${MODEL_URL:-}"

cd "$repo_root"
dest="${out:-models/$name}"
sha_file="models/$name.sha256"
source_sha_file="models/$source_name.sha256"
requirements="models/requirements-convert.txt"
venv="${CONVERT_VENV:-build/venv-convert}"
shared="${SHARED_MODELS:-../shared/models}"

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | awk '{print $1}'
  else
    shasum -a 256 "$1" | awk '{print $1}'
  fi
}

pin_of() {
  local pin
  pin="$(awk 'NF {print $1; exit}' "$1")"
  [[ "$pin" =~ ^[0-9a-f]{64}$ ]] || { echo "error: no sha256 in $1" >&2; exit 1; }
  printf '%s\n' "$pin"
}

# verify FILE EXPECTED WHAT: fails with both checksums when they differ.
verify() {
  local got
  got="$(sha256_of "$1")"
  if [[ "$got" != "$2" ]]; then
    echo "error: sha256 mismatch for $3" >&2
    echo "  expected $2" >&2
    echo "  got      $got" >&2
    return 1
  fi
}

download() {
  echo "downloading $1"
  if command -v curl >/dev/null 2>&1; then
    curl --fail --location --silent --show-error --output "$2" "$1"
  elif command -v wget >/dev/null 2>&1; then
    wget --quiet --output-document="$2" "$1"
  else
    echo "error: need curl or wget to download" >&2
    exit 1
  fi
}

# The converter's venv: created, or reinstalled when requirements-convert.txt changed.
setup_converter() {
  local stamp want
  stamp="$venv/.requirements-convert.sha256"
  want="$(sha256_of "$requirements")"
  if [[ -x "$venv/bin/python" && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then
    return 0
  fi
  if [[ "${CONVERT_OFFLINE:-}" == 1 ]]; then
    echo "error: the converter's venv $venv is missing or older than $requirements, and" \
      "CONVERT_OFFLINE=1 forbids installing: run models/get-model.sh --setup-converter" \
      "(infra/test.sh does)" >&2
    exit 1
  fi
  echo "setting up the converter's venv in $venv ($requirements)"
  [[ -x "$venv/bin/python" ]] || "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
  echo "$want" >"$stamp"
}

tmp=""
cleanup() { [[ -z "$tmp" ]] || rm -f "$tmp"; [[ -z "${tmp_source:-}" ]] || rm -f "$tmp_source"; }
trap cleanup EXIT
new_tmp() {
  mkdir -p "$(dirname "$dest")"
  tmp="$(mktemp "$(dirname "$dest")/.$name.XXXXXX")"
}

# Converts the tflite (downloading it first without a path) into $tmp.
from_source() {
  local expected_source
  expected_source="$(pin_of "$source_sha_file")"
  if [[ -z "$tflite" ]]; then
    tmp_source="$(mktemp "${TMPDIR:-/tmp}/$source_name.XXXXXX")"
    download "${MODEL_SOURCE_URL:-$pinned_source_url}" "$tmp_source"
    tflite="$tmp_source"
  fi
  [[ -f "$tflite" ]] || { echo "error: $tflite does not exist" >&2; exit 1; }
  verify "$tflite" "$expected_source" "$tflite (the pinned $source_name, $source_sha_file)"
  setup_converter
  new_tmp
  "$venv/bin/python" models/tflite_to_onnx.py "$tflite" "$tmp"
}

expected="$(pin_of "$sha_file")"

case "$mode" in
  setup)
    setup_converter
    echo "converter venv ready: $venv/bin/python"
    exit 0
    ;;
  source)
    from_source
    ;;
  copy)
    if [[ -z "$out" && -f "$dest" ]] && verify "$dest" "$expected" "$dest" 2>/dev/null; then
      echo "$dest already present and verified ($expected)"
      exit 0
    fi
    if [[ -f "$shared/$name" ]]; then
      echo "copying $shared/$name"
      new_tmp
      cp "$shared/$name" "$tmp"
    elif [[ -n "$url" ]]; then
      new_tmp
      download "$url" "$tmp"
    else
      echo "no local copy at $shared/$name: building it from its public source (--from-source)"
      from_source
    fi
    ;;
esac

if ! verify "$tmp" "$expected" "$dest"; then
  if [[ "$mode" == source || -n "$tflite" ]]; then
    echo "  the converter's output is not the pinned model: are the packages in $venv those" \
      "of $requirements? (delete $venv to reinstall)" >&2
  fi
  exit 1
fi
chmod 0644 "$tmp" # mktemp creates 0600
mv -f "$tmp" "$dest"
tmp=""
echo "wrote $dest ($(wc -c <"$dest" | tr -d ' ') bytes, sha256 $expected)"
