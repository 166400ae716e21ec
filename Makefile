# Every target bootstraps .venv on first use (and again when pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## run the main job end to end on the embedded stack
	$(BIN)/velocity demo

test: $(STAMP)  ## the whole test suite against real services (installs Docker, Chromium)
	scripts/test-tools
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)  ## the benchmarks, printing JSON figures
	$(BIN)/python -m bench.rpc_throughput --json

lint: $(STAMP)
	$(BIN)/ruff check velocity tasks flows orchestrator agent deployments tests bench
	$(BIN)/mypy velocity tasks flows orchestrator agent deployments bench

clean:
	rm -rf $(VENV) .velocity
