#!/usr/bin/env bash
# Runs every test: the Rust suite (engine parity with diffusers, CLI, server)
# and the real Python clients (webuiapi, openai, schemathesis) it drives, and the
# deployment tests (image under runc and gVisor, compose, Kubernetes manifests).
# The Python clients live in .venv-test, created here from PyPI on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -f scripts/requirements-test.txt ]; then
  if [ ! -x .venv-test/bin/python ]; then
    python3 -m venv .venv-test
  fi
  .venv-test/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
  export SDSERVE_TEST_PYTHON="$PWD/.venv-test/bin/python"
fi

# The deployment tests' manifest checks (kubernetes-validate, checkov) in a venv of
# their own; the Docker daemon they also need is started by scripts/docker-up.sh.
# SDSERVE_SKIP_DEPLOY_TESTS=1 skips them (on a machine without Docker).
if [ "${SDSERVE_SKIP_DEPLOY_TESTS:-}" != 1 ]; then
  if [ ! -x .venv-deploy/bin/python ]; then
    python3 -m venv .venv-deploy
  fi
  .venv-deploy/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements-deploy.txt
  export SDSERVE_DEPLOY_PYTHON="$PWD/.venv-deploy/bin/python"
fi

cargo test --workspace "$@"
