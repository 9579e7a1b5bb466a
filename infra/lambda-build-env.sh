# Sourced (not run) by infra/build-lambdas.sh, infra/sam-build.sh and infra/check-arm64.sh:
# the environment in which `cargo lambda build` (ours, or the one `sam build` runs per function)
# compiles the Lambdas for arm64 and x86_64 with Debian's Rust toolchain, offline.
#
# Why Debian's toolchain: rustup cannot add the aarch64 standard library without internet,
# while Debian ships rustc 1.96 with a matching std for both architectures
# (libstd-rust-web-dev:amd64 / :arm64, installed by infra/setup-build-tools.sh).
# cargo lambda drives plain cargo (CARGO_LAMBDA_COMPILER=cargo, no zig); GNU's cross gcc links
# arm64 and builds the C parts (aws-lc-sys, mozjpeg-sys) against the cross glibc headers.
#
# cargo lambda --release (1.9) passes `--config build.rustflags=["-C", "target-cpu=neoverse-n1"]`
# (arm64, Graviton2) or `target-cpu=haswell` (x86_64, where .cargo/config.toml's target section
# says the same, with thin LTO's import limit, and wins). LAMBDA_CARGO_CONFIG_<arch> repeat
# that for the builds that do not go through cargo lambda (the featurize CLI in
# infra/check-arm64.sh), so that all share one cache.

_lbe_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# cargo-lambda and sam from .venv-deploy (infra/setup-deploy-tools.sh), then Debian's cargo and
# rustc ahead of any rustup proxies.
export PATH="$_lbe_root/.venv-deploy/bin:/usr/bin:$PATH"
export RUSTC=/usr/bin/rustc
export RUSTDOC=/usr/bin/rustdoc
export CARGO_LAMBDA_COMPILER=cargo
# cargo lambda would otherwise ask rustup for the target (and try `rustup target add`, which
# needs the internet); the std comes from Debian here, so point its rustup lookup at nothing.
export RUSTUP=/nonexistent/rustup

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar

export LAMBDA_CARGO_CONFIG_arm64='build.rustflags=["-C", "target-cpu=neoverse-n1"]'
export LAMBDA_CARGO_CONFIG_x86_64='build.rustflags=["-C", "target-cpu=haswell"]'

unset _lbe_root
