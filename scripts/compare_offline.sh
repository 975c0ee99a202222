#!/usr/bin/env bash
# The standard first comparison on a new workstation: the two offline models (SmolLM2-135M
# instruct, Llama architecture; Gemma-3-270M base) under two prompt templates, on the word
# task's 24 seed states. Scores are reused when the output directory already holds them.
#   scripts/compare_offline.sh [OUT_DIR] [extra dbgpu compare options...]
set -euo pipefail
cd "$(dirname "$0")/.."
make -s venv
out=${1:-runs/compare-offline}
shift || true
.venv/bin/dbgpu compare --models smollm2-135m,gemma3-270m --templates paper,terse \
    --task word100 --n-states 24 --out "$out" "$@"
echo
cat "$out/compare.md"
