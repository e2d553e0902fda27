# The two commands a newcomer needs: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/murmur launch --peers 5

# The whole suite in two runs, each on every core: what needs no real processes (CPU-bound: the
# simulations), then the real-process tests (marked slow), which mostly wait on timers and
# sockets and so share the machine with each other but not with the simulations.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n auto --dist worksteal
	$(BIN)/python -m pytest -q -m slow -n 2 --dist worksteal

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n auto --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/detection_real.py

clean:
	rm -rf $(VENV) .pytest_cache
