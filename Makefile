# Targets match the README. `make demo` and `make test` work on a fresh clone (Python 3.11 + pip).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -c constraints.txt

.PHONY: install demo test test-quick lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, by itself: pip then takes the pinned CUDA build that runs fine on CPU.
install: $(BIN)/python
	$(PIP) -q torch==2.14.1 torchvision==0.29.1
	$(PIP) -q -e '.[dev]'

# The demo recipe runs on one compute thread (run.num_threads): on a 2-core machine that other processes
# use, torch's two threads wait on each other at every op (a step took 7 s instead of 0.45 s).
demo: install
	$(BIN)/emotionnet-synth demo/fer_synth.csv --rows 3000 --seed 0
	$(BIN)/emotionnet-train --config demo

# Two workers (pytest-xdist), then alone the tests that measure wall time or own the SLURM test cluster
# (marker serial); both parts always run.
test: install
	$(BIN)/python -m pytest -q -n 2 -m "not serial"; parallel=$$?; \
	$(BIN)/python -m pytest -q -m serial; serial=$$?; \
	test $$parallel -eq 0 -a $$serial -eq 0

test-quick: install
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format:
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) demo outputs *.egg-info

# GPU check (docs/gpu.md). gpu-kit: what an air-gapped CUDA node lacks, in .gpu-kit/ (needs `make install`
# and ../shared/fer2013). gpu-check: run there with .gpu-kit copied in; QUICK=1 tests + batch-8 benchmark
# only; CPU=1 the same script dry on the CPU (tiny sizes, CUDA-only checks skipped). OUT=dir for results.
.PHONY: gpu-kit gpu-check
gpu-kit:
	$(BIN)/python scripts/gpu_kit.py

gpu-check:
	CPU=$(CPU) QUICK=$(QUICK) OUT=$(OUT) bash scripts/gpu_check.sh
