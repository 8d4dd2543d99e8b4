#!/usr/bin/env bash
# Create .venv and install gptrecipe with pinned dependencies (CPU torch 2.13.0). Idempotent.
#   bash scripts/setup.sh         what the main job needs (requirements.lock, ~1 min on a fresh machine)
#   bash scripts/setup.sh --dev   also the tests' and benchmarks' extras (requirements-dev.lock: lm-eval,
#                                 playwright, transformers, openai, pytest, ruff, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
lock=requirements.lock
[ "${1:-}" = "--dev" ] && lock=requirements-dev.lock
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.gptrecipe-installed
want=$(cat "$lock" pyproject.toml | sha256sum | cut -c1-16)
# a dev install also satisfies the runtime one
have=$(cat "$stamp" 2>/dev/null || true)
if [ "$have" != "$want" ] && { [ "$lock" = requirements-dev.lock ] || \
     [ "$have" != "$(cat requirements-dev.lock pyproject.toml | sha256sum | cut -c1-16)" ]; }; then
  .venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
  .venv/bin/pip install -q --disable-pip-version-check -r "$lock"
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
