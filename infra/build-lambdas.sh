#!/usr/bin/env bash
# Build the three Lambda binaries (splitter, featurizer, reducer) as bootstrap zips
# with cargo lambda, one output directory per architecture:
#
#   infra/build-lambdas.sh [all|arm64|x86_64]     (default: all)
#
#   target/lambda-arm64/<name>/bootstrap.zip
#   target/lambda-x86_64/<name>/bootstrap.zip
#
# `sam build` does its own cargo lambda build from template.yaml;
# this script is for checking sizes, deploying by hand, or building both
# architectures in one go. It installs nothing. If `cargo lambda` is missing:
#
#   pip install cargo-lambda     # ships the cargo-lambda binary
#   pip install ziglang          # zig, the cross linker cargo lambda uses by default
#   rustup target add aarch64-unknown-linux-gnu x86_64-unknown-linux-gnu
#
# (or see https://www.cargo-lambda.info/guide/installation.html).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

functions=(splitter featurizer reducer)
which_arch="${1:-all}"
case "$which_arch" in
  all) archs=(arm64 x86_64) ;;
  arm64 | x86_64) archs=("$which_arch") ;;
  *)
    echo "usage: $0 [all|arm64|x86_64]" >&2
    exit 2
    ;;
esac

# The tools infra/setup-deploy-tools.sh installs, if present.
[ -d .venv-deploy/bin ] && export PATH="$PWD/.venv-deploy/bin:$PATH"
if ! cargo lambda --version >/dev/null 2>&1; then
  cat >&2 <<'EOF'
error: `cargo lambda` not found. Run infra/setup-deploy-tools.sh, or install it yourself:
  pip install cargo-lambda      # provides the cargo-lambda binary
  pip install ziglang           # zig, needed to cross-link (e.g. arm64 from x86_64)
  rustup target add aarch64-unknown-linux-gnu x86_64-unknown-linux-gnu
or follow https://www.cargo-lambda.info/guide/installation.html
EOF
  exit 1
fi
echo "using $(cargo lambda --version)"

# Only the Lambda crates: at the workspace root a bare build would select just the
# root package (the featurize CLI).
packages=()
for f in "${functions[@]}"; do packages+=(--package "$f"); done

size_of() { wc -c <"$1" | tr -d ' '; }
unzipped_size() {
  python3 -c 'import sys, zipfile; print(sum(i.file_size for i in zipfile.ZipFile(sys.argv[1]).infolist()))' "$1"
}

for arch in "${archs[@]}"; do
  case "$arch" in
    arm64) flag=--arm64 ;;
    x86_64) flag=--x86-64 ;;
  esac
  out="$repo_root/target/lambda-$arch"
  echo
  echo "== $arch -> ${out#"$repo_root"/}"
  cargo lambda build --release "$flag" --output-format zip --lambda-dir "$out" "${packages[@]}"

  for f in "${functions[@]}"; do
    z="$out/$f/bootstrap.zip"
    if [[ ! -f "$z" ]]; then
      echo "error: $z was not produced" >&2
      exit 1
    fi
    printf '  %-11s %s  zip %10s bytes, unzipped %10s bytes\n' \
      "$f" "${z#"$repo_root"/}" "$(size_of "$z")" "$(unzipped_size "$z")"
  done
done

echo
echo "Lambda limits: 50 MB zipped for a direct upload (SAM uploads via S3), 250 MB unzipped"
echo "for a function plus its layers (the featurizer also carries the model layer, see infra/build-layer.sh)."
