#!/usr/bin/env bash
# The formula agent on the two offline models: SmolLM2 explores (63 steps x 32 = 2,016
# answers by default); the task's 32 seed states plus the valid formulas it discovered are
# scored exactly under SmolLM2-135M and Gemma-3-270M (`dbgpu compare`: score, fit, report,
# compared), and each run's V is explained by the formulas' features (`dbgpu explain`).
# A second call continues the explore run by STEPS more steps and reuses unchanged scores.
#   scripts/formula_offline.sh [OUT_DIR] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
make -s venv
out=${1:-runs/formula-offline}
steps=${2:-63}
mkdir -p "$out"
.venv/bin/dbgpu explore --model smollm2-135m --task formula --steps "$steps" --batch 32 \
    --out "$out/explore" --quiet
.venv/bin/dbgpu states "$out/explore" --out "$out/discovered.json"
.venv/bin/python - "$out" <<'PY'
import json, sys
from dbgpu.tasks.formula import SEEDS, Formula
out = sys.argv[1]
seeds = Formula().seed_states(len(SEEDS))
found = json.load(open(f"{out}/discovered.json"))
json.dump(seeds + [s for s in found if s not in seeds], open(f"{out}/states.json", "w"), indent=1)
PY
.venv/bin/dbgpu compare --models smollm2-135m,gemma3-270m --task formula --states "$out/states.json" \
    --out "$out/compare" --quiet
for run in "$out"/compare/runs/*/; do
    echo "== $run"
    .venv/bin/dbgpu explain "$run"
done
