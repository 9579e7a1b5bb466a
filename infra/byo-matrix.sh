#!/usr/bin/env bash
# The whole "bring your own model" fidelity matrix (docs/model.md, "Fidelity per option"):
# every preprocessing option of the spec on 60 Fruits-360 images and the odd sizes, our
# features against infra/byo_reference.py (Pillow + numpy + onnxruntime). Prints the table
# docs/model.md records; fails when an option is over the limits (max |delta| 1e-4, the
# model's input image identical to Pillow's). CI runs a sample of the same test.
#
#   infra/byo-matrix.sh            # needs .venv (infra/test.sh makes it) and ../shared
set -euo pipefail
cd "$(dirname "$0")/.."

export FEATURIZE_PYTHON="${FEATURIZE_PYTHON:-$PWD/.venv/bin/python}"
if ! "$FEATURIZE_PYTHON" -c "import onnx, onnxruntime, PIL, numpy" 2>/dev/null; then
  echo "error: $FEATURIZE_PYTHON lacks onnx, onnxruntime, Pillow or numpy: run ./infra/test.sh" >&2
  echo "  (it installs infra/requirements-test.txt into .venv)" >&2
  exit 1
fi
log=$(mktemp -t byo-matrix.XXXXXX.log)
trap 'rm -f "$log"' EXIT
status=0
BYO_MATRIX=full cargo test --test e2e -- --exact \
  byo_model::every_preprocessing_option_matches_pillow_and_onnxruntime \
  byo_model::torchvision_preset_run_matches_the_python_reference \
  --nocapture --test-threads 1 >"$log" 2>&1 || status=$?
grep -E '^\|' "$log" || true
grep -oE 'featurize run --model-spec.*' "$log" || true
if [ "$status" -ne 0 ]; then
  echo "FAILED (exit $status); the test output:" >&2
  tail -40 "$log" >&2
fi
exit "$status"
