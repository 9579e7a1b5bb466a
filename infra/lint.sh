#!/usr/bin/env bash
# Style checks (CI runs them before the tests): rustfmt's formatting, and clippy on every crate
# and target (library, binaries, tests, examples) with warnings as errors. The crate graph's
# direction needs no check here: a crate can only import what its Cargo.toml names, and
# `cargo tree` shows the test kit only as a dev-dependency (docs/architecture.md).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== the Lambdas link no test kit"
for f in featurizer splitter reducer checker featurize; do
  if cargo tree -p "$f" -e normal --prefix none | grep -q '^featurize-testkit'; then
    echo "$f depends on featurize-testkit outside dev-dependencies"; exit 1
  fi
done
