#!/usr/bin/env bash
# Two builds of featurize on the same whole local job, in alternation, with paired
# statistics (a benchmark: it prints numbers and checks nothing). On a shared machine whose
# speed moves by ±20 % from minute to minute, one run of each says nothing: alternating A
# and B many times and looking at the paired differences (B - A, each pair a few seconds
# apart) does. A difference whose |mean| is under about twice its standard error is noise.
#
# Usage: infra/ab-runs.sh [-n PAIRS] [-j JOBS] INPUT BIN_A BIN_B
#   INPUT  a folder of images (e.g. the linked 1,000 images of infra/compare-pipeline.sh)
#   -n     pairs of runs (default 12)   -j  featurize run -j (default 2)
# Environment: FEATURIZE_PYTHON (default python3) reads the runs' summary.json.
set -euo pipefail
pairs=12
jobs=2
while getopts "n:j:" opt; do
  case $opt in
    n) pairs=$OPTARG ;;
    j) jobs=$OPTARG ;;
    *) echo "usage: $0 [-n PAIRS] [-j JOBS] INPUT BIN_A BIN_B" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -eq 3 ] || { echo "usage: $0 [-n PAIRS] [-j JOBS] INPUT BIN_A BIN_B" >&2; exit 2; }
for b in "$2" "$3"; do [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 1; }; done
[ -d "$1" ] || { echo "not a folder: $1" >&2; exit 1; }
input=$(realpath "$1")
bins=("$(realpath "$2")" "$(realpath "$3")")
python=${FEATURIZE_PYTHON:-python3}
# From the repository root, where `featurize run` finds the model (models/ or ../shared).
cd "$(dirname "$0")/.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "pairs: $pairs, jobs: $jobs, input: $input, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "A = ${bins[0]}"
echo "B = ${bins[1]}"
for i in $(seq "$pairs"); do
  for side in 0 1; do
    out="$work/out"
    rm -rf "$out"
    t0=$(date +%s.%N)
    "${bins[$side]}" run --input "$input" --output "$out" -j "$jobs" -q >/dev/null
    t1=$(date +%s.%N)
    "$python" - "$out" "$side" "$t0" "$t1" >> "$work/runs.tsv" <<'EOF'
import glob, json, sys
out, side, t0, t1 = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
s = json.load(open(glob.glob(f"{out}/runs/*/summary.json")[0]))
t = s["timings"]
print("AB"[int(side)], t1 - t0, t["featurize"]["wall_s"], t["infer_ms_per_image"], t["reduce_s"], sep="\t")
EOF
  done
done
"$python" - "$work/runs.tsv" <<'EOF'
import statistics as st, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines()]
cols = {"wall s": 1, "featurize wall s": 2, "inference ms/image/thread": 3, "reduce s": 4}
print(f"{'':28} {'A mean':>8} {'A median':>9} {'B mean':>8} {'B median':>9}   paired B - A: mean ± standard error")
for name, c in cols.items():
    a = [float(r[c]) for r in rows if r[0] == "A"]
    b = [float(r[c]) for r in rows if r[0] == "B"]
    d = [y - x for x, y in zip(a, b)]
    se = st.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan")
    print(f"{name:28} {st.mean(a):8.3f} {st.median(a):9.3f} {st.mean(b):8.3f} {st.median(b):9.3f}"
          f"   {st.mean(d):+.3f} ± {se:.3f} ({100 * st.mean(d) / st.mean(a):+.1f} %)")
EOF
