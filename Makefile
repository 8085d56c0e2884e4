# One-command set-up on a fresh machine with Python 3.11 and make.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean native browser

NATIVE := $(VENV)/.native
# The engine's hot path, compiled with mypyc (setup.py); edited sources are compiled again.
NATIVE_SRC := quota/quantity.py quota/tree.py queue/workload.py queue/queues.py \
	scheduler/engine/units.py scheduler/engine/decisions.py scheduler/engine/wakeup.py \
	scheduler/engine/state.py scheduler/engine/placement.py scheduler/engine/parking.py scheduler/engine/borrowing.py scheduler/engine/events.py scheduler/engine/preemption.py \
	scheduler/engine/cycle.py scheduler/engine/preview.py scheduler/engine/changes.py scheduler/engine/views.py scheduler/engine/capacity.py scheduler/engine/facade.py

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	RAYQUEUE_PURE_PYTHON=1 $(BIN)/python -m pip install -q -e '.[all,dev]'
	@touch $(STAMP)

# Stale extensions are removed first, so a failed compile leaves the interpreted engine, never an old one.
$(NATIVE): $(STAMP) setup.py $(NATIVE_SRC)
	@rm -f quota/*.so queue/*.so scheduler/*.so scheduler/engine/*.so
	@if [ "$${RAYQUEUE_PURE_PYTHON:-0}" != 0 ]; then echo "RAYQUEUE_PURE_PYTHON is set: the engine runs interpreted"; \
	elif $(BIN)/python setup.py -q build_ext --inplace >$(VENV)/native-build.log 2>&1; then touch quota/*.so queue/*.so scheduler/*.so scheduler/engine/*.so; echo "compiled the engine with mypyc"; \
	else echo "warning: the mypyc compile failed (see $(VENV)/native-build.log): the engine runs interpreted"; fi
	@touch $(NATIVE)

native: $(NATIVE)

demo: $(NATIVE)
	$(BIN)/rayqueue demo

lint: $(STAMP)
	$(BIN)/ruff check quota queue scheduler simulations tests benchmarks
	@# mypy resolves `rayqueue.*` imports through the same layout setup.py stages for mypyc (the folders
	@# are mapped into `rayqueue` by package-dir, which mypy cannot read): every module checked by its name.
	@mkdir -p build/typing/rayqueue && for p in quota queue scheduler simulations crds; do ln -sfn ../../../$$p build/typing/rayqueue/$$p; done
	MYPYPATH=build/typing $(BIN)/mypy -p rayqueue.quota -p rayqueue.queue -p rayqueue.scheduler -p rayqueue.simulations
	$(BIN)/lint-imports

# The dashboard's browser test drives Debian's chromium (tests/test_dashboard_browser.py fails without it).
browser:
	@command -v chromium >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "chromium is missing: install it as root (apt-get install chromium); the browser test needs it" >&2; fi; }

test: $(NATIVE) lint browser
	$(BIN)/python -m pytest -q

bench: $(NATIVE)
	$(BIN)/python benchmarks/engine_drain.py --repeat 3

clean:
	rm -rf $(VENV) .rayqueue build *.egg-info
	rm -f quota/*.so queue/*.so scheduler/*.so scheduler/engine/*.so
