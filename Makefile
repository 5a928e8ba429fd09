# clear-lab: every command creates the environment (.venv) on first use.
#   make figures   regenerate every figure on the embedded default data
#   make test      linter + the whole test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch; a GPU user installs a CUDA torch into .venv first (see README) and make keeps it.
TORCH_SPEC ?= torch==2.13.0

.PHONY: env figures test lint lab bench lock clean-runs

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-cpu.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -r requirements-cpu.lock
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (clear-lab)" >/dev/null
	touch $@

figures: env
	$(BIN)/clear-lab figures

lint: env
	$(BIN)/ruff check clear_lab tests benchmarks notebooks

test: lint
	$(BIN)/python -m pytest -q -ra

lab: env
	$(BIN)/jupyter lab notebooks/

bench: env
	$(BIN)/python benchmarks/bench_epoch.py

lock:
	head -n 2 requirements-cpu.lock > requirements-cpu.lock.new
	$(BIN)/pip freeze --exclude-editable | grep -v '^torch==' | sort -f >> requirements-cpu.lock.new
	mv requirements-cpu.lock.new requirements-cpu.lock

clean-runs:
	rm -rf runs notebooks/executed
