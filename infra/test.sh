#!/usr/bin/env bash
# The test command (README "Quick start"): sets up the Python side of the tests in .venv
# (pyarrow to read our Parquet back, moto as the S3 + SQS emulator, cfn-lint), lints the SAM
# template, starts moto on a free loopback port, runs every Rust test, and stops moto.
# Extra arguments go to `cargo test` (e.g. `infra/test.sh -- aws::`).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=.venv
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# Reinstall only when the requirements changed.
stamp="$venv/.requirements-test.sha256"
want=$(sha256sum infra/requirements-test.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r infra/requirements-test.txt
  echo "$want" > "$stamp"
fi
# The model converter's own venv (models/requirements-convert.txt), which
# tests/e2e/model_source.rs runs offline on ../shared's copy of the public source.
models/get-model.sh --setup-converter

echo "== cfn-lint template.yaml"
"$venv/bin/cfn-lint" template.yaml

port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp -t moto.XXXXXX.log)
"$venv/bin/python" -m moto.server -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
moto_pid=$!
stop_moto() {
  kill "$moto_pid" 2>/dev/null || true
  wait "$moto_pid" 2>/dev/null || true
}
trap stop_moto EXIT
for _ in $(seq 1 100); do
  if "$venv/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/')" 2>/dev/null; then
    break
  fi
  if ! kill -0 "$moto_pid" 2>/dev/null; then
    echo "moto failed to start:"; cat "$log"; exit 1
  fi
  sleep 0.2
done
echo "== moto (S3 + SQS emulator) on 127.0.0.1:$port"

export MOTO_ENDPOINT="http://127.0.0.1:$port"
export FEATURIZE_PYTHON="$PWD/$venv/bin/python"
# The scenario tests drive whole handlers (S3 + SQS clients behind the retry and fault
# layers) inside one test thread; their futures are deep, so test threads get 32 MiB.
export RUST_MIN_STACK="${RUST_MIN_STACK:-33554432}"
# The CLI with its `aws` feature (the AWS SDK; off in its default build, docs/architecture.md):
# the e2e tests drive `featurize submit`, `status --bucket`, ... against moto.
cargo test --workspace --features featurize/aws "$@"
if [ $# -eq 0 ]; then
  # The CLI without its `aws` feature (the quick start's build): its own unit tests, among them
  # the refusal of every command that talks to AWS. `--workspace` keeps the dependencies of the
  # run above (only the CLI's crate is built again).
  cargo test --workspace --bin featurize
fi
