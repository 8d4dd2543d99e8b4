#!/usr/bin/env bash
# Create .venv and install gptrecipe with pinned dependencies (CPU torch 2.13.0). Idempotent.
#   bash scripts/setup.sh         what the main job needs (requirements.lock, ~30-40 s on a fresh machine)
#   bash scripts/setup.sh --dev   also the tests' and benchmarks' extras (requirements-dev.lock: lm-eval,
#                                 playwright, transformers, openai, pytest, ruff, ...)
# The installs go through uv (pinned below; parallel downloads, ~5x faster than pip here); where uv cannot be
# had, pip installs the same pinned files.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
UV_VERSION=0.13.9
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
  pip=(.venv/bin/pip install -q --disable-pip-version-check)
  if "${pip[@]}" "uv==$UV_VERSION" 2>/dev/null; then
    # uv does not read pip's configuration: pass on a local wheel folder (where a CPU torch build may lie)
    links=$(.venv/bin/pip config get global.find-links 2>/dev/null || echo "${PIP_FIND_LINKS:-}")
    uv=(.venv/bin/uv pip install -q --python .venv/bin/python ${links:+--find-links "$links"})
    "${uv[@]}" "torch==2.13.0" -r "$lock"
    "${uv[@]}" --no-deps -e .
  else
    "${pip[@]}" "torch==2.13.0"
    "${pip[@]}" -r "$lock"
    "${pip[@]}" --no-deps -e .
  fi
  echo "$want" > "$stamp"
fi
