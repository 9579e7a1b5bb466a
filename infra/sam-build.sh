#!/usr/bin/env bash
# `sam build` for the architecture set in samconfig.toml, offline, compiling the workspace once:
#
#   infra/sam-build.sh [extra sam build options, e.g. --debug]
#
# SAM runs `cargo lambda build --release [--arm64|--x86-64] --bin <Binary>` in each function's crate
# folder (BuildMethod: rust-cargolambda, CodeUri: functions/<name>). SAM CLI >= 1.170 points all
# three at the workspace's one cargo target folder (CARGO_TARGET_DIR, default target/), so the
# first function compiles the workspace and the other two only link; after
# infra/build-lambdas.sh (same command, same environment) none of them compiles anything.
# This script adds the environment of infra/lambda-build-env.sh (Debian's rustc with the arm64
# std, the cross gcc; no rustup target, no zig), checks that samconfig.toml gives build and
# deploy the same Architecture, and checks the built bootstraps are for that architecture.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

for a in "$@"; do
  case "$a" in
    *Architecture=*)
      echo "error: set Architecture in samconfig.toml ([default.global.parameters]), not on the command line," >&2
      echo "       so that sam deploy uses the same one" >&2
      exit 2
      ;;
  esac
done

if [ ! -x .venv-deploy/bin/sam ] || ! command -v aarch64-linux-gnu-gcc >/dev/null || [ ! -x /usr/bin/cargo ]; then
  infra/setup-build-tools.sh
fi
# shellcheck source=infra/lambda-build-env.sh
. infra/lambda-build-env.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo_root/target}"
# Offline, SAM's telemetry calls would only time out.
export SAM_CLI_TELEMETRY="${SAM_CLI_TELEMETRY:-0}"
mkdir -p "$CARGO_TARGET_DIR"
CARGO_TARGET_DIR="$(cd "$CARGO_TARGET_DIR" && pwd)"

# The Architecture each command gets from samconfig.toml (the command's own section wins over
# global, as in SAM CLI; the template's default when neither sets it).
arch=$(.venv-deploy/bin/python - <<'EOF'
import re, sys, tomllib
cfg = tomllib.load(open("samconfig.toml", "rb")).get("default", {})
default = re.search(r"Architecture:\s*\n(?:\s+.*\n)*?\s+Default:\s*(\S+)", open("template.yaml").read()).group(1)
def arch(command):
    for section in (command, "global"):
        overrides = cfg.get(section, {}).get("parameters", {}).get("parameter_overrides")
        if overrides is not None:
            if isinstance(overrides, list):
                overrides = " ".join(overrides)
            m = re.search(r"""Architecture=["']?(\w+)""", overrides)
            return (m.group(1) if m else default), section
    return default, "template default"
(b, bs), (d, ds) = arch("build"), arch("deploy")
if b != d:
    sys.exit(f"error: samconfig.toml builds for {b} ({bs}) but deploys {d} ({ds}); set it once in [default.global.parameters]")
if b not in ("arm64", "x86_64"):
    sys.exit(f"error: Architecture={b} in samconfig.toml: arm64 or x86_64")
print(b)
EOF
)
echo "== sam build for $arch (samconfig.toml), cargo target dir $CARGO_TARGET_DIR"
start=$(date +%s)
sam build "$@"
echo "   sam build: $(($(date +%s) - start)) s"

case "$arch" in
  arm64) want='AArch64' ;;
  x86_64) want='Advanced Micro Devices X86-64' ;;
esac
for fn in SplitterFunction FeaturizerFunction ReducerFunction; do
  bin=.aws-sam/build/$fn/bootstrap
  machine=$(readelf -h "$bin" | sed -n 's/^ *Machine: *//p')
  if [ "$machine" != "$want" ]; then
    echo "error: $bin is for '$machine', samconfig.toml says $arch" >&2
    exit 1
  fi
  printf '   %-19s %s, %s bytes\n' "$fn" "$machine" "$(wc -c <"$bin" | tr -d ' ')"
done
