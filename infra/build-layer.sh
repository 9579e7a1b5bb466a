#!/usr/bin/env bash
# Stage the model Lambda layer for template.yaml's ModelLayer (ContentUri: build/layer/).
#
#   infra/build-layer.sh [MODEL_ONNX]
#   infra/build-layer.sh --model M.onnx [--spec S.json|PRESET]   # your own model (docs/model.md)
#
# MODEL_ONNX defaults to models/mobilenet_v2_features.onnx, falling back to
# ${SHARED_MODELS:-../shared/models}/mobilenet_v2_features.onnx (relative
# paths are taken from the repo root). The file must match
# models/mobilenet_v2_features.onnx.sha256.
#
# Produces:
#   build/layer/model/mobilenet_v2_features.onnx   -> /opt/model/... in Lambda
#   build/layer/model/model_spec.json              -> /opt/model/model_spec.json
#   build/model-layer.zip                          (same content, for manual upload)
#   build/model-layer.sha256                       the model's sha256: the stack's ModelSha256
#
# It prints the model's sha256 as `ModelSha256: <sha>`, and fails when samconfig.toml's
# ModelSha256= (what `sam deploy` passes; the template's ModelSha256 has no default) is
# missing or another one, so that the stack's ModelSha256 and the layer's model cannot drift
# apart.
#
# Lambda caps a function plus all its layers at 250 MB unzipped; this fails if
# the layer alone exceeds LAYER_BUDGET_BYTES (default 200 MiB), leaving room
# for the featurizer binary.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

name=mobilenet_v2_features.onnx
sha_file="models/$name.sha256"
spec="models/model_spec.json"
layer_dir="build/layer"
zip_out="build/model-layer.zip"
sha_out="build/model-layer.sha256"
lambda_limit=$((250 * 1000 * 1000)) # Lambda's documented 250 MB (decimal) unzipped limit
budget="${LAYER_BUDGET_BYTES:-$((200 * 1024 * 1024))}"

# Bring your own model (docs/model.md): `--model M.onnx [--spec S.json|PRESET]`. The model is
# staged under the layer's file name (template.yaml's MODEL_PATH) and its spec as
# model_spec.json; the bundled model's pin (models/*.sha256) does not apply to it, the
# samconfig.toml ModelSha256 check below does. PRESET: keras-mobilenet, torchvision, clip.
byo=""
positional=()
while (($#)); do
  case "$1" in
    --model) byo=1; positional+=("${2:?--model needs a path}"); shift 2 ;;
    --spec)
      case "${2:?--spec needs a file or a preset}" in
        keras-mobilenet) spec="models/model_spec.json" ;;
        *.json | */*) spec="$2" ;;
        *) spec="models/presets/$2.json" ;;
      esac
      shift 2 ;;
    *) positional+=("$1"); shift ;;
  esac
done
set -- "${positional[@]+"${positional[@]}"}"

model="${1:-}"
if [[ -z "$model" ]]; then
  model="models/$name"
  if [[ ! -f "$model" && -f "${SHARED_MODELS:-../shared/models}/$name" ]]; then
    model="${SHARED_MODELS:-../shared/models}/$name"
  fi
fi
if [[ ! -f "$model" ]]; then
  echo "error: model not found at $model; run models/get-model.sh first" >&2
  exit 1
fi
[[ -f "$spec" ]] || { echo "error: $spec is missing" >&2; exit 1; }

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | awk '{print $1}'
  else
    shasum -a 256 "$1" | awk '{print $1}'
  fi
}
size_of() { wc -c <"$1" | tr -d ' '; }

if [[ -n "$byo" ]]; then expected="$(sha256_of "$model")"; else expected="$(awk 'NF {print $1; exit}' "$sha_file")"; fi
got="$(sha256_of "$model")"
if [[ "$got" != "$expected" ]]; then
  echo "error: sha256 mismatch for $model" >&2
  echo "  expected $expected ($sha_file)" >&2
  echo "  got      $got" >&2
  exit 1
fi
echo "model: $model ($(size_of "$model") bytes, sha256 OK)"

# The stack's ModelSha256 must be this model's sha256: the splitter records it in every run
# (it is part of the run id) and featurizers refuse runs made for another model. The template
# gives it no default: samconfig.toml's parameter_overrides pass it to `sam deploy`. Refuse to
# stage a layer whose model disagrees with (or is missing from) samconfig.toml, and record
# the value beside the layer (build/model-layer.sha256).
samconfig="${SAMCONFIG:-samconfig.toml}"
overrides="$(grep -o 'ModelSha256=[^ "]*' "$samconfig" 2>/dev/null || true)"
if [[ -z "$overrides" ]]; then
  echo "error: $samconfig passes no ModelSha256 (template.yaml requires it); add to its parameter_overrides:" >&2
  echo "  ModelSha256=$got" >&2
  exit 1
fi
while read -r override; do
  if [[ "${override#ModelSha256=}" != "$got" ]]; then
    echo "error: $samconfig sets $override, the layer's model is $got" >&2
    echo "  change both together: models/$name.sha256 and samconfig.toml's ModelSha256 (see models/README.md)" >&2
    exit 1
  fi
done <<<"$overrides"

# Stage. Copy only when the content changed, so mtimes (and the layer's hash
# in sam build/package) stay stable across rebuilds.
mkdir -p "$layer_dir/model"
stage() {
  local src="$1" dst="$2"
  if ! cmp -s "$src" "$dst" 2>/dev/null; then
    cp "$src" "$dst"
  fi
  chmod 0644 "$dst"
}
stage "$model" "$layer_dir/model/$name"
stage "$spec" "$layer_dir/model/model_spec.json"
# Nothing else belongs in the layer.
find "$layer_dir" -mindepth 1 \
  ! -path "$layer_dir/model" \
  ! -path "$layer_dir/model/$name" \
  ! -path "$layer_dir/model/model_spec.json" \
  -exec rm -rf {} +

# Zip with paths relative to the layer root (model/...), as Lambda mounts it at /opt.
rm -f "$zip_out"
if command -v zip >/dev/null 2>&1; then
  (cd "$layer_dir" && zip -q -X -r "../$(basename "$zip_out")" model)
else
  (cd "$layer_dir" && python3 -m zipfile -c "../$(basename "$zip_out")" model)
fi

unzipped=0
while IFS= read -r -d '' f; do
  unzipped=$((unzipped + $(size_of "$f")))
done < <(find "$layer_dir" -type f -print0)
zipped="$(size_of "$zip_out")"

echo "layer dir:  $layer_dir/ ($unzipped bytes unzipped)"
find "$layer_dir" -type f -print0 | sort -z | while IFS= read -r -d '' f; do
  printf '  %12s  %s\n' "$(size_of "$f")" "${f#"$layer_dir"/}"
done
echo "layer zip:  $zip_out ($zipped bytes)"
printf '%s  %s\n' "$got" "model/$name" >"$sha_out"
echo "ModelSha256: $got (samconfig.toml passes it to sam deploy; recorded in $sha_out)"
echo "budget:     $budget bytes for the layer; Lambda limit $lambda_limit bytes unzipped (function + layers)"

if ((unzipped > budget)); then
  echo "error: layer is $unzipped bytes unzipped, over the $budget-byte budget" >&2
  exit 1
fi
echo "OK: $((lambda_limit - unzipped)) bytes left for the function package under the 250 MB limit"
