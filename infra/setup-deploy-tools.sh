#!/usr/bin/env bash
# Installs the deployment tools from PyPI into .venv-deploy (nothing system-wide):
# cargo-lambda (ships the cargo-lambda binary) and aws-sam-cli (with cfn-lint, for
# `sam validate --lint`; and boto3, which infra/preflight.sh uses when the AWS CLI is not
# installed). infra/build-lambdas.sh, infra/sam-build.sh and infra/check-arm64.sh
# put .venv-deploy/bin on PATH themselves; for an interactive shell: `source .venv-deploy/bin/activate`.
# The compilers and the arm64 standard library come from apt: infra/setup-build-tools.sh
# (which also runs this script).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv-deploy/bin/python ] || "$python" -m venv .venv-deploy
# Reinstall only when the requirements changed.
stamp=.venv-deploy/.requirements-deploy.sha256
want=$(sha256sum infra/requirements-deploy.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv-deploy/bin/python -m pip install --quiet --disable-pip-version-check -r infra/requirements-deploy.txt
  echo "$want" >"$stamp"
fi
echo "   $(.venv-deploy/bin/cargo-lambda lambda --version 2>/dev/null || .venv-deploy/bin/cargo-lambda --version), $(.venv-deploy/bin/sam --version), cfn-lint $(.venv-deploy/bin/cfn-lint --version | awk '{print $2}')"
