#!/usr/bin/env bash
# Builds the three Lambda binaries (splitter, featurizer, reducer) as bootstrap zips, one folder
# per architecture, from a fresh clone on a Debian 12 x86_64 host, offline except for apt/PyPI:
#
#   infra/build-lambdas.sh [all|arm64|x86_64]
#
# The default is the architecture samconfig.toml deploys (its Architecture= override,
# x86_64: what infra/sam-build.sh builds and `sam deploy` gives the functions); `all` builds
# both.
#
#   $CARGO_TARGET_DIR/lambda-arm64/<name>/bootstrap.zip      (CARGO_TARGET_DIR defaults to target/)
#   $CARGO_TARGET_DIR/lambda-x86_64/<name>/bootstrap.zip
#
# 1. Installs what it needs (infra/setup-build-tools.sh: Debian's rustc 1.96 with the arm64 and
#    x86_64 std, the aarch64 cross gcc, qemu-user-static, zip; cargo-lambda and SAM CLI from PyPI
#    into .venv-deploy). SKIP_SETUP=1 skips that step.
# 2. Builds with `cargo lambda build --release` in the environment of infra/lambda-build-env.sh,
#    the same command and environment that infra/sam-build.sh gives `sam build`, so both share
#    one cargo target folder and a later `sam build` compiles nothing.
# 3. Checks each bootstrap as Lambda will load it: an ELF for the right machine, dynamically
#    linked only against glibc's own libraries, and needing no glibc symbol version newer than
#    Amazon Linux 2023's (2.34, provided.al2023). Prints the highest GLIBC_x.y per binary and fails
#    above 2.34.
#
# Checking the arm64 code itself (golden features under qemu): infra/check-arm64.sh.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

functions=(splitter featurizer reducer)
samconfig_arch=$(grep -o 'Architecture=[a-z0-9_]*' samconfig.toml | head -1 | cut -d= -f2)
which_arch="${1:-${samconfig_arch:-x86_64}}"
case "$which_arch" in
  all) archs=(arm64 x86_64) ;;
  arm64 | x86_64) archs=("$which_arch") ;;
  *)
    echo "usage: $0 [all|arm64|x86_64]" >&2
    exit 2
    ;;
esac

# Amazon Linux 2023 (provided.al2023) ships glibc 2.34.
max_glibc=${MAX_GLIBC:-2.34}

if [ "${SKIP_SETUP:-0}" != 1 ]; then
  infra/setup-build-tools.sh
fi
# shellcheck source=infra/lambda-build-env.sh
. infra/lambda-build-env.sh
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
mkdir -p "$target_dir"
target_dir="$(cd "$target_dir" && pwd)"
export CARGO_TARGET_DIR="$target_dir"
echo "== $(rustc --version), $(cargo lambda --version), target dir ${target_dir}"

packages=()
for f in "${functions[@]}"; do packages+=(--package "$f"); done

mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }
version_gt() { [ "$1" != "$2" ] && [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | tail -1)" = "$1" ]; }

# Checks one bootstrap and prints: machine, NEEDED libraries, highest GLIBC version (+ symbols).
check_binary() {
  local bin=$1 arch=$2 machine want_machine needed bad_needed glibc_max syms
  case "$arch" in
    arm64) want_machine=AArch64 ;;
    x86_64) want_machine='Advanced Micro Devices X86-64' ;;
  esac
  machine=$(readelf -h "$bin" | sed -n 's/^ *Machine: *//p')
  if [ "$machine" != "$want_machine" ]; then
    echo "error: $bin is for '$machine', expected '$want_machine'" >&2
    return 1
  fi
  needed=$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
  # Only glibc's own libraries exist on provided.al2023 (no OpenSSL, BLAS, libstdc++, ...).
  bad_needed=$(tr ' ' '\n' <<<"$needed" | grep -v -E '^(libc|libm|libdl|libpthread|librt|libgcc_s|ld-linux-aarch64|ld-linux-x86-64)\.so\.[0-9]+$' | grep -v '^$' | tr '\n' ' ' || true)
  if [ -n "$bad_needed" ]; then
    echo "error: $bin needs libraries Lambda does not provide: $bad_needed" >&2
    return 1
  fi
  # The versions the binary requires (.gnu.version_r), e.g. GLIBC_2.34.
  glibc_max=$(readelf -W -V "$bin" | grep -o 'Name: GLIBC_[0-9.]*' | sed 's/Name: GLIBC_//' | sort -V | tail -1)
  syms=$(readelf -W --dyn-syms "$bin" | grep -o "[A-Za-z0-9_]*@GLIBC_${glibc_max}\b" | sed 's/@.*//' | sort -u | head -4 | tr '\n' ' ')
  printf '             needs %s\n' "$needed"
  printf '             highest GLIBC_%s (%s)\n' "$glibc_max" "${syms% }"
  if version_gt "$glibc_max" "$max_glibc"; then
    echo "error: $bin needs GLIBC_$glibc_max, newer than Amazon Linux 2023's $max_glibc" >&2
    return 1
  fi
}

summary=()
for arch in "${archs[@]}"; do
  out="$target_dir/lambda-$arch"
  echo
  echo "== $arch -> $out"
  start=$(date +%s)
  case "$arch" in
    arm64) flag=--arm64 ;;
    x86_64) flag=--x86-64 ;;
  esac
  cargo lambda build --release "$flag" --output-format zip --lambda-dir "$out" "${packages[@]}"
  secs=$(($(date +%s) - start))
  echo "   cargo lambda build ($arch): ${secs} s"

  for f in "${functions[@]}"; do
    z="$out/$f/bootstrap.zip"
    if [[ ! -f "$z" ]]; then
      echo "error: $z was not produced" >&2
      exit 1
    fi
    # Check the binary exactly as zipped (bootstrap at the zip root, executable).
    tmp=$(mktemp -d)
    unzip -q "$z" -d "$tmp"
    [ -x "$tmp/bootstrap" ] || { echo "error: $z has no executable bootstrap at its root" >&2; exit 1; }
    zipped=$(wc -c <"$z" | tr -d ' ')
    unzipped=$(wc -c <"$tmp/bootstrap" | tr -d ' ')
    printf '  %-11s %s  zip %s bytes (%s MB), unzipped %s bytes (%s MB)\n' "$f" "$z" \
      "$zipped" "$(mb "$zipped")" "$unzipped" "$(mb "$unzipped")"
    check_binary "$tmp/bootstrap" "$arch"
    glibc=$(readelf -W -V "$tmp/bootstrap" | grep -o 'Name: GLIBC_[0-9.]*' | sed 's/Name: GLIBC_//' | sort -V | tail -1)
    summary+=("$(printf '%-7s %-11s zip %9s B  unzipped %9s B  GLIBC_%s' "$arch" "$f" "$zipped" "$unzipped" "$glibc")")
    rm -rf "$tmp"
  done
done

echo
echo "== summary (every bootstrap needs at most GLIBC_$max_glibc)"
printf '  %s\n' "${summary[@]}"
echo
echo "Lambda limits: 50 MB zipped for a direct upload (SAM uploads via S3), 250 MB unzipped"
echo "for a function plus its layers (the featurizer also carries the model layer, see infra/build-layer.sh)."
