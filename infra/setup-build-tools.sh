#!/usr/bin/env bash
# Installs what infra/build-lambdas.sh needs to build the Lambdas for arm64 and x86_64 on a
# Debian 12 (bookworm) x86_64 host, with no rustup download:
#
#   apt (system-wide, needs root or sudo):
#     rustc-web, cargo-web              Debian's Rust 1.96 (bookworm-security)
#     libstd-rust-web-dev:arm64/:amd64  its standard library for both targets
#     gcc-aarch64-linux-gnu, binutils-aarch64-linux-gnu, libc6-dev-arm64-cross
#                                       cross linker, C compiler (aws-lc-sys, mozjpeg-sys), objdump
#     qemu-user-static                  runs arm64 binaries here (infra/check-arm64.sh)
#     binutils (readelf), zip, unzip
#   PyPI (into .venv-deploy, via infra/setup-deploy-tools.sh): cargo-lambda, aws-sam-cli.
#
# Idempotent: skips apt when everything is installed already. It enables the arm64 foreign
# architecture (`dpkg --add-architecture arm64`), which `apt-get update` then indexes too.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  rustc-web cargo-web libstd-rust-web-dev:amd64 libstd-rust-web-dev:arm64
  gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu libc6-dev-arm64-cross
  qemu-user-static binutils zip unzip
)
# Debian's rustc-web is 1.96 in bookworm-security; the workspace needs >= rust-version.
min_rustc=1.91

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "error: run as root or install sudo" >&2; exit 1; }
  sudo=(sudo)
fi

if ! grep -qi 'bookworm\|trixie' /etc/os-release 2>/dev/null; then
  echo "warning: tested on Debian 12 (bookworm); other releases may ship another rustc-web" >&2
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== apt: installing ${missing[*]}"
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    "${sudo[@]}" dpkg --add-architecture arm64
  fi
  "${sudo[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${packages[@]}"
else
  echo "== apt: build packages already installed"
fi

have=$(/usr/bin/rustc --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$min_rustc" "$have" | sort -V | head -1)" != "$min_rustc" ]; then
  echo "error: /usr/bin/rustc is $have, the workspace needs >= $min_rustc (is bookworm-security enabled?)" >&2
  exit 1
fi
sysroot=$(/usr/bin/rustc --print sysroot)
for t in aarch64-unknown-linux-gnu x86_64-unknown-linux-gnu; do
  ls "$sysroot/lib/rustlib/$t/lib/"libstd-*.rlib >/dev/null 2>&1 \
    || { echo "error: no $t standard library under $sysroot/lib/rustlib" >&2; exit 1; }
done
echo "   $(/usr/bin/rustc --version) with std for aarch64 and x86_64; $(aarch64-linux-gnu-gcc --version | head -1)"

# cargo-lambda (and SAM CLI) from PyPI.
infra/setup-deploy-tools.sh
