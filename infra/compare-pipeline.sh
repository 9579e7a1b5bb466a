#!/usr/bin/env bash
# The whole local job, ours against the Python pipeline, on the same images (a benchmark: it
# prints numbers and checks nothing):
#   `featurize run -j JOBS` and `infra/python-pipeline.py --processes JOBS` (Pillow +
#   onnxruntime 1 thread per process + numpy PCA k=50 + pyarrow) on the first N images (sorted
#   paths) of INPUT, linked into a temporary folder (label folders kept), each timed from
#   process start to exit; then the throughput ratio ours / Python.
#
# Usage: infra/compare-pipeline.sh [INPUT] [N] [JOBS]
#   INPUT  default ../shared/data/fruits-360/Test;  N default 1000;  JOBS default 2
# Environment: FEATURIZE (the binary; default $CARGO_TARGET_DIR/release/featurize, else
#   target/release/featurize), FEATURIZE_PYTHON (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
input=${1:-../shared/data/fruits-360/Test}
n=${2:-1000}
jobs=${3:-2}
target=${CARGO_TARGET_DIR:-target}
bin=${FEATURIZE:-$target/release/featurize}
python=${FEATURIZE_PYTHON:-.venv/bin/python}
[ -x "$bin" ] || { echo "no featurize binary at $bin (set FEATURIZE)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/images"
# The first N image paths in sorted order, linked under their label folder.
find "$(realpath "$input")" -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) \
  | LC_ALL=C sort > "$work/all.txt"
head -n "$n" "$work/all.txt" | while IFS= read -r path; do
    label=$(basename "$(dirname "$path")")
    mkdir -p "$work/images/$label"
    ln -s "$path" "$work/images/$label/$(basename "$path")"
  done
count=$(find "$work/images" -type l | wc -l)
echo "images: $count (first $n of $input, sorted), jobs: $jobs, load average: $(cut -d' ' -f1-3 /proc/loadavg)"

now() { date +%s.%N; }
t0=$(now)
"$bin" run --input "$work/images" --output "$work/ours" -j "$jobs" -q
t1=$(now)
"$python" infra/python-pipeline.py "$work/images" "$work/python" --images "$n" --processes "$jobs"
t2=$(now)
awk -v n="$count" -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN {
  ours = b - a; py = c - b;
  printf "featurize run -j:  %.2f s wall, %.1f images/s\n", ours, n / ours;
  printf "python pipeline:   %.2f s wall, %.1f images/s\n", py, n / py;
  printf "throughput ours / python: %.2fx\n", py / ours;
}'
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
