# One-command set-up on a fresh machine with Python 3.11 and make.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rayqueue demo

lint: $(STAMP)
	$(BIN)/ruff check quota queue scheduler simulations tests benchmarks
	$(BIN)/mypy quota queue scheduler simulations

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/engine_drain.py

clean:
	rm -rf $(VENV) .rayqueue build *.egg-info
