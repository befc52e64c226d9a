# Two commands do all set-up: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test lint bench clean

$(BIN)/mailping: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test-deps: $(BIN)/mailping
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: $(BIN)/mailping
	$(BIN)/mailping serve

lint: $(VENV)/.test-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest -q

bench: $(VENV)/.test-deps
	$(BIN)/python bench/relay_bench.py
	$(BIN)/python bench/pixel_bench.py

clean:
	rm -rf $(VENV) mailping-data
