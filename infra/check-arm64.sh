#!/usr/bin/env bash
# Checks the arm64 build's numbers: runs the `featurize` CLI cross-built for arm64 (the same
# library code as the featurizer Lambda, same compiler flags: -C target-cpu=neoverse-n1) under
# qemu-user on ../shared/golden/seed72's 72 images, and the x86_64 build of the same CLI
# natively, then compares both with the golden reference the way tests/e2e/local.rs does:
#
#   per-image cosine >= 0.9999 and max |delta| <= 1e-2 against golden/seed72/features.parquet
#   (tract's NEON kernels round differently from its x86 AVX/FMA ones), plus arm64 vs x86_64
#   max |delta|, and the PCA's explained-variance ratios against golden/seed72/pca_model.json.
#
#   infra/check-arm64.sh            (after infra/build-lambdas.sh, or on its own: it builds
#                                    what it needs; SKIP_SETUP=1 skips the apt/PyPI step;
#                                    CARGO_TARGET_DIR_ARM64 / _X86_64 if the two builds
#                                    live in separate target folders; X86_64_FEATURIZE=PATH
#                                    compares with an x86_64 `featurize` already built, e.g.
#                                    target/release/featurize, instead of building one)
#
# Not a CI step (a cross build plus an emulated inference run: tens of minutes on 2 cores).
# Run it when the toolchain, tract, or the preprocessing changes, and report what it prints.
#
# qemu gotcha: run qemu-aarch64-static WITHOUT -L. The dynamic loader and libc then both come
# from Debian's multiarch libc6:arm64 (/lib/ld-linux-aarch64.so.1, pulled in by
# libstd-rust-web-dev:arm64); mixing the cross sysroot's loader (/usr/aarch64-linux-gnu) with
# the multiarch libc hangs in pthread_create.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
shared="${SHARED_DIR:-$repo_root/../shared}"
golden="$shared/golden/seed72"
data="$shared/data/fruits-360"
model="${MODEL_PATH:-$shared/models/mobilenet_v2_features.onnx}"
for p in "$golden/features.parquet" "$golden/images.txt" "$data" "$model"; do
  [ -e "$p" ] || { echo "error: $p is missing (../shared beside the repository)" >&2; exit 1; }
done

if [ "${SKIP_SETUP:-0}" != 1 ]; then
  infra/setup-build-tools.sh
fi
# shellcheck source=infra/lambda-build-env.sh
. infra/lambda-build-env.sh
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
# Per-architecture target folders, if the builds were kept apart (default: the same one).
declare -A dir=([arm64]="${CARGO_TARGET_DIR_ARM64:-$target_dir}" [x86_64]="${CARGO_TARGET_DIR_X86_64:-$target_dir}")

# pyarrow (the test suite's pin) for reading the Parquet outputs (in .venv-deploy, which the
# setup step makes; made here too when SKIP_SETUP=1 runs in a clone that has none).
[ -x .venv-deploy/bin/python ] || python3 -m venv .venv-deploy
if ! .venv-deploy/bin/python -c 'import pyarrow' 2>/dev/null; then
  .venv-deploy/bin/python -m pip install --quiet --disable-pip-version-check \
    "$(grep -E '^pyarrow==' infra/requirements-test.txt)"
fi

declare -A triple=([arm64]=aarch64-unknown-linux-gnu [x86_64]=x86_64-unknown-linux-gnu)
declare -A config=([arm64]="$LAMBDA_CARGO_CONFIG_arm64" [x86_64]="$LAMBDA_CARGO_CONFIG_x86_64")
declare -A prebuilt=([x86_64]="${X86_64_FEATURIZE:-}")
for arch in arm64 x86_64; do
  if [ -n "${prebuilt[$arch]:-}" ]; then
    echo "== $arch: using the prebuilt ${prebuilt[$arch]}"
    continue
  fi
  echo "== cargo build --release --target ${triple[$arch]} -p featurize --config '${config[$arch]}'"
  start=$(date +%s)
  CARGO_TARGET_DIR="${dir[$arch]}" \
    cargo build --release --locked --target "${triple[$arch]}" -p featurize --config "${config[$arch]}"
  echo "   built in $(($(date +%s) - start)) s"
done

work=$(mktemp -d -t featurize-arm64-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
# The 72 golden images, linked (not copied) under their dataset-relative paths, so the
# output's `path` column matches the golden one.
while IFS= read -r rel; do
  [ -n "$rel" ] || continue
  mkdir -p "$work/in/$(dirname "$rel")"
  ln -s "$data/$rel" "$work/in/$rel"
done <"$golden/images.txt"

run() { # arch, command prefix...
  local arch=$1
  shift
  local bin="${prebuilt[$arch]:-${dir[$arch]}/${triple[$arch]}/release/featurize}"
  echo "== $arch: featurize run on $(wc -l <"$golden/images.txt") images"
  local start end
  start=$(date +%s.%N)
  "$@" "$bin" run --input "$work/in" --output "$work/out-$arch" --model "$model" --k 50 --quiet
  end=$(date +%s.%N)
  echo "   $arch run: $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }') s wall"
}
# No -L (see the gotcha above); QEMU_CPU=max (qemu's default) offers every Neoverse-N1 feature.
run arm64 qemu-aarch64-static
run x86_64

.venv-deploy/bin/python - "$golden" "$work/out-arm64" "$work/out-x86_64" <<'EOF'
import glob, json, math, os, sys
import pyarrow.parquet as pq

golden_dir, out_arm, out_x86 = sys.argv[1:4]

def features(parquet_files):
    rows = {}
    for f in parquet_files:
        t = pq.read_table(f).to_pydict()
        for path, vec in zip(t["path"], t["features"]):
            rows[path] = vec
    return rows

def results(out):
    files = sorted(glob.glob(os.path.join(out, "Results", "**", "*.parquet"), recursive=True))
    assert files, f"no Results parquet under {out}"
    return features(files)

def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

golden = features([os.path.join(golden_dir, "features.parquet")])
arm, x86 = results(out_arm), results(out_x86)
assert len(golden) == 72, len(golden)
ok = True
for name, ours in (("arm64", arm), ("x86_64", x86)):
    missing = sorted(set(golden) - set(ours))
    if missing:
        print(f"FAIL {name}: {len(missing)} golden images missing from the output, e.g. {missing[:3]}")
        ok = False
        continue
    cos = [cosine(ours[p], golden[p]) for p in golden]
    delta = max(abs(a - b) for p in golden for a, b in zip(ours[p], golden[p]))
    verdict = "ok" if min(cos) >= 0.9999 and delta <= 1e-2 else "FAIL"
    ok &= verdict == "ok"
    print(f"{verdict:4} {name:6} vs golden: cosine min {min(cos):.7f} mean {sum(cos) / len(cos):.7f}, "
          f"max |delta| {delta:.2e}   (thresholds: cosine >= 0.9999, |delta| <= 1e-2)")
if set(golden) <= set(arm) and set(golden) <= set(x86):
    delta = max(abs(a - b) for p in golden for a, b in zip(arm[p], x86[p]))
    cos = min(cosine(arm[p], x86[p]) for p in golden)
    print(f"     arm64  vs x86_64: cosine min {cos:.9f}, max |delta| {delta:.2e}")

# PCA fitted on each build's features vs the golden scikit-learn fit (top 10 ratios).
ref = json.load(open(os.path.join(golden_dir, "pca_model.json")))
for name, out in (("arm64", out_arm), ("x86_64", out_x86)):
    models = glob.glob(os.path.join(out, "runs", "*", "pca_model.json"))
    if not models:
        print(f"FAIL {name}: no runs/*/pca_model.json")
        ok = False
        continue
    m = json.load(open(models[0]))
    d = max(abs(a - b) for a, b in zip(m["explained_variance_ratio"][:10], ref["explained_variance_ratio"][:10]))
    verdict = "ok" if d <= 1e-4 else "FAIL"
    ok &= verdict == "ok"
    print(f"{verdict:4} {name:6} PCA: top-10 explained-variance ratio max |delta| vs golden {d:.2e}  (threshold 1e-4)")
sys.exit(0 if ok else 1)
EOF
