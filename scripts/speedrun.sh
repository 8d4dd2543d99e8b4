#!/usr/bin/env bash
# The main job: set up, then tokenizer -> pretrain a tiny GPT -> samples -> runs/speedrun/report.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/gptrecipe run "$@"
