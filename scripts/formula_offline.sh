#!/usr/bin/env bash
# The formula agent on the two offline models: SmolLM2 explores (63 steps x 32 = 2,016
# answers by default); the task's 32 seed states plus the valid formulas it discovered are
# scored exactly under SmolLM2-135M and Gemma-3-270M (`dbgpu run --states`: score, fit,
# explain, report; coverage and self-transition mass printed per state).
# A second call continues the explore run by STEPS more steps.
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
for model in smollm2-135m gemma3-270m; do
    .venv/bin/dbgpu run --task formula --model "$model" --states "$out/states.json" --out "$out/$model" --quiet
done
