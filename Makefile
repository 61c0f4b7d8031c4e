# The two commands a newcomer needs (see README.md):
#   make run    set up and run zcache (embedded PostgreSQL with the tldraw schema when ZERO_UPSTREAM_DB is unset)
#   make test   set up and run every test tier (Rust unit tests, Python unit + real-Postgres tests)
# Everything lands in .venv; the Rust core is built by maturin into the editable install.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup run test test-rust test-python bench clean

$(VENV)/bin/maturin:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip "maturin>=1.16,<2"

# maturin is incremental: with nothing changed this takes a few seconds.
setup: $(VENV)/bin/maturin
	$(VENV)/bin/maturin develop --release --quiet --extras test,embedded

run: setup
	$(VENV)/bin/zcache

test-rust:
	cargo test --quiet

test-python: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test: test-rust test-python

bench: setup
	$(PY) -m pytest bench --benchmark-enable $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) target .zcache
