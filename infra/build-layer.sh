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
#   build/model-spec.sha256                        the spec's sha256: the stack's ModelSpecSha256
#
# It prints the model's sha256 as `ModelSha256: <sha>`, and fails when samconfig.toml's
# ModelSha256= (what `sam deploy` passes; the template's ModelSha256 has no default) is
# missing or another one, so that the stack's ModelSha256 and the layer's model cannot drift
# apart. Likewise the spec: it prints `ModelSpecSha256: <sha>` (the sha256 of the spec's
# canonical JSON with the model's tensor names resolved, as engine::model::ModelSpec::sha256
# computes it and the featurizer checks at cold start) and fails when samconfig.toml sets
# another ModelSpecSha256=, or sets none while the spec is not the built-in one (the
# template's default, models/model_spec.json.sha256). For a model or spec of your own the
# value comes from loading the model with its spec (examples/model_identity.rs, through
# `cargo run`, or the binary MODEL_IDENTITY names), which also checks that they fit.
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
spec_sha_out="build/model-spec.sha256"
builtin_spec="models/model_spec.json"
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
  sha_errors=1
fi
while read -r override; do
  if [[ -n "$override" && "${override#ModelSha256=}" != "$got" ]]; then
    echo "error: $samconfig sets $override, the layer's model is $got" >&2
    if [[ -n "$byo" ]]; then
      echo "  set ModelSha256=$got in its parameter_overrides (your model's sha256)" >&2
    else
      echo "  change both together: models/$name.sha256 and samconfig.toml's ModelSha256 (see models/README.md)" >&2
    fi
    sha_errors=1
  fi
done <<<"$overrides"
# Both values are named before stopping (the spec's below), so one edit of samconfig.toml fixes both.

# The spec's identity: the built-in spec's is recorded beside it; any other comes from loading
# the model with it (which also validates the spec against the model's input).
builtin_spec_sha="$(awk 'NF {print $1; exit}' "$builtin_spec.sha256")"
if cmp -s "$spec" "$builtin_spec"; then
  spec_sha="$builtin_spec_sha"
else
  if [[ -n "${MODEL_IDENTITY:-}" ]]; then
    identity_cmd=("$MODEL_IDENTITY")
  else
    identity_cmd=(cargo run --quiet --example model_identity --)
  fi
  echo "spec: $spec is not the built-in one: loading $model with it (${identity_cmd[*]})"
  if ! identity="$("${identity_cmd[@]}" "$model" "$spec")"; then
    echo "error: $model does not load with the spec $spec (see above)" >&2
    exit 1
  fi
  spec_sha="$(printf '%s\n' "$identity" | sed -n 's/.*"spec_sha256": *"\([0-9a-f]\{64\}\)".*/\1/p')"
  if [[ -z "$spec_sha" ]]; then
    echo "error: no spec_sha256 in the model identity: $identity" >&2
    exit 1
  fi
fi
spec_overrides="$(grep -o 'ModelSpecSha256=[^ "]*' "$samconfig" 2>/dev/null || true)"
if [[ -z "$spec_overrides" ]]; then
  if [[ "$spec_sha" != "$builtin_spec_sha" ]]; then
    echo "error: $spec is not the built-in spec, and $samconfig passes no ModelSpecSha256 (the template's" >&2
    echo "  default is the built-in spec's); add to its parameter_overrides:" >&2
    echo "  ModelSpecSha256=$spec_sha" >&2
    sha_errors=1
  fi
else
  while read -r override; do
    if [[ "${override#ModelSpecSha256=}" != "$spec_sha" ]]; then
      echo "error: $samconfig sets $override, the layer's spec ($spec) is $spec_sha" >&2
      echo "  set ModelSpecSha256=$spec_sha in its parameter_overrides (or remove it for the built-in spec)" >&2
      sha_errors=1
    fi
  done <<<"$spec_overrides"
fi
echo "spec: $spec (sha256 $spec_sha)"
if [[ -n "${sha_errors:-}" ]]; then
  exit 1
fi

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
printf '%s  %s\n' "$spec_sha" "model/model_spec.json" >"$spec_sha_out"
echo "ModelSpecSha256: $spec_sha ($( [[ "$spec_sha" == "$builtin_spec_sha" ]] && echo "the built-in spec: the template's default" || echo "pass it to sam deploy in samconfig.toml" ); recorded in $spec_sha_out)"
echo "budget:     $budget bytes for the layer; Lambda limit $lambda_limit bytes unzipped (function + layers)"

if ((unzipped > budget)); then
  echo "error: layer is $unzipped bytes unzipped, over the $budget-byte budget" >&2
  exit 1
fi
echo "OK: $((lambda_limit - unzipped)) bytes left for the function package under the 250 MB limit"
