#!/usr/bin/env bash
# Stage the model Lambda layer for template.yaml's ModelLayer (ContentUri: build/layer/).
#
#   infra/build-layer.sh [MODEL_ONNX]
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
# It prints the model's sha256 as `ModelSha256: <sha>`, and fails when template.yaml's
# ModelSha256 default (or a ModelSha256= in samconfig.toml) is another one, so that the
# stack's ModelSha256 and the layer's model cannot drift apart.
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

expected="$(awk 'NF {print $1; exit}' "$sha_file")"
got="$(sha256_of "$model")"
if [[ "$got" != "$expected" ]]; then
  echo "error: sha256 mismatch for $model" >&2
  echo "  expected $expected ($sha_file)" >&2
  echo "  got      $got" >&2
  exit 1
fi
echo "model: $model ($(size_of "$model") bytes, sha256 OK)"

# The stack's ModelSha256 must be this model's sha256: the splitter records it in every run
# (it is part of the run id) and featurizers refuse runs made for another model. Refuse to
# stage a layer whose model disagrees with template.yaml's default or a samconfig.toml
# override, and record the value beside the layer (build/model-layer.sha256).
template_sha="$(awk '/^  ModelSha256:/ {p = 1; next} p && /^  [^ ]/ {exit}
  p && $1 == "Default:" {gsub(/["\047]/, "", $2); print $2; exit}' template.yaml)"
if [[ "$template_sha" != "$got" ]]; then
  echo "error: template.yaml's ModelSha256 default is ${template_sha:-missing}, the layer's model is $got" >&2
  echo "  change both together: models/$name.sha256 and template.yaml's ModelSha256 (see models/README.md)" >&2
  exit 1
fi
while read -r override; do
  if [[ "${override#ModelSha256=}" != "$got" ]]; then
    echo "error: samconfig.toml sets $override, the layer's model is $got" >&2
    exit 1
  fi
done < <(grep -o 'ModelSha256=[^ "]*' samconfig.toml 2>/dev/null || true)

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
echo "ModelSha256: $got (template.yaml's default; recorded in $sha_out)"
echo "budget:     $budget bytes for the layer; Lambda limit $lambda_limit bytes unzipped (function + layers)"

if ((unzipped > budget)); then
  echo "error: layer is $unzipped bytes unzipped, over the $budget-byte budget" >&2
  exit 1
fi
echo "OK: $((lambda_limit - unzipped)) bytes left for the function package under the 250 MB limit"
