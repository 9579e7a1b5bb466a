#!/usr/bin/env bash
# Installs the deployment tools from PyPI into .venv-deploy (nothing system-wide):
# cargo-lambda (ships the cargo-lambda binary), ziglang (its cross linker) and aws-sam-cli
# (cfn-lint comes with the test venv, infra/test.sh). Then: `source .venv-deploy/bin/activate` (or use infra/build-lambdas.sh, which
# picks the venv up by itself).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv-deploy/bin/python ] || "$python" -m venv .venv-deploy
.venv-deploy/bin/python -m pip install --quiet --disable-pip-version-check -r infra/requirements-deploy.txt
echo "installed: $(.venv-deploy/bin/cargo-lambda lambda --version 2>/dev/null || .venv-deploy/bin/cargo-lambda --version), zig $(.venv-deploy/bin/python -m ziglang version), $(.venv-deploy/bin/sam --version)"
if ! rustup target list --installed 2>/dev/null | grep -q aarch64-unknown-linux-gnu; then
  echo "note: for arm64 builds also run: rustup target add aarch64-unknown-linux-gnu"
fi
