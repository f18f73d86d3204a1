#!/usr/bin/env bash
# Runs every test: the Rust suite (engine parity with diffusers, CLI, server)
# and the real Python clients (webuiapi, openai, schemathesis) it drives.
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

cargo test --workspace "$@"
