# agentic-rectune — every target installs what it needs into .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST := $(BIN)/pytest

.PHONY: setup lint test test-fast test-kafka test-all demo bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: install Python 3.11 (hint: PYTHON=python3 make ...)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test-fast: $(STAMP)
	$(PYTEST) -m "not kafka and not slow"

test-kafka: $(STAMP)
	$(PYTEST) -m "kafka and not slow"

test: lint test-fast test-kafka

test-all: lint
	$(PYTEST)

demo: $(STAMP)
	$(BIN)/rectune demo --start-config examples/start_no_diversity.json

bench: $(STAMP)
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/sidecar.py
	$(BIN)/python bench/breaker.py
	$(BIN)/python bench/assign_unit.py
	$(BIN)/python bench/paired_read.py
	$(BIN)/python bench/stats.py
	$(BIN)/python bench/ope_screen.py
	$(BIN)/python bench/power_calibration.py
	$(BIN)/python bench/tuning.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .cache runs
