#!/usr/bin/env bash
# Style checks (CI runs them before the tests): rustfmt's formatting, the code's shape
# (infra/check-structure.py: file and function lengths, no module cycles), and clippy on every
# crate and target (library, binaries, tests, examples) with warnings as errors. The crate graph's
# direction needs no check here: a crate can only import what its Cargo.toml names, and
# `cargo tree` shows the test kit only as a dev-dependency (docs/architecture.md).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== infra/check-structure.py"
python3 infra/check-structure.py
# Both builds of the CLI: without its `aws` feature (the default, no AWS SDK) and with it.
echo "== cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo clippy --workspace --all-targets --all-features -- -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings
# In the two above the Lambdas (and the tests) turn on featurize-aws's `sdk`: the quick
# start's build, the CLI alone, is checked on its own.
echo "== cargo clippy -p featurize -p featurize-aws --lib --bins -- -D warnings"
cargo clippy -p featurize -p featurize-aws --lib --bins -- -D warnings
echo "== the Lambdas link no test kit"
for f in featurizer splitter reducer checker featurize; do
  if cargo tree -p "$f" -e normal --prefix none | grep -q '^featurize-testkit'; then
    echo "$f depends on featurize-testkit outside dev-dependencies"; exit 1
  fi
done
