# The whole developer workflow. `make test` on a fresh clone installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test check test-group lint typecheck pytest bench torture install clean

$(STAMP): pyproject.toml
	@echo "first use (or pyproject.toml changed): installing mq-py and its dev tools into $(VENV); this takes about a minute"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Start the broker on 127.0.0.1:8080 with its embedded SQLite store in ./mqpy-data.
## Flags go in ARGS: make run ARGS="--max-attempts 3".
run: $(STAMP)
	$(BIN)/mqpy serve $(ARGS)

## Lint, type-check and run every test.
test: lint typecheck pytest

## The fast loop: lint, type-check and every test not marked slow, two workers a core
## (pytest-xdist: each test starts its own servers on ephemeral ports, and much of a
## test is waiting on them, so a second worker a core uses what the first leaves idle).
## On two cores -n 2/3/4/6/8 took 115/93/77/69/74 s; at -n 6 the extra load made a
## pacing test's receiver timestamps miss their 0.05 s slack once in four runs. See README.
## --dist worksteal: a worker that runs out takes tests queued for another. With the
## default (load) one worker ran 7 s past the others once in two runs (its queue at the
## end); with worksteal the last ended within 3.2 s of the first (pytest 68-70 s against
## 70-75 s, two runs each at -n 4).
CHECK_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(2 * (os.cpu_count() or 1))')
## PYTHONDONTWRITEBYTECODE is cleared for it: without the bytecode caches (gitignored)
## every worker compiles mq-py and pytest rewrites every test module again, 2.6 s of
## CPU a worker, and every interpreter a test starts compiles mq-py (0.14 s).
## Nothing it runs uses schemathesis' pytest plugin (test_schemathesis.py is slow, and not
## even imported: tests/conftest.py), and loading it is 0.34 s of each worker's start.
check: lint typecheck
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -m "not slow" -n $(CHECK_WORKERS) --dist worksteal \
		-p no:schemathesis

## The tests where a group of processes (what `mqpy serve` runs by default) can differ
## from one process, with every server the harness starts a group of 2
## (MQPY_TEST_PROCESSES; tests marked one_process keep one). Not in CI yet: see README.
GROUP_WORKERS ?= 2
test-group: $(STAMP)
	MQPY_TEST_PROCESSES=2 $(BIN)/pytest -m "not slow and not one_process" -n $(GROUP_WORKERS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench torture
	$(BIN)/ruff format --check src tests bench torture
	@# vulture: code nothing calls; its paths and the names frameworks call are in pyproject.toml
	$(BIN)/vulture

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

## Measure publish and delivery throughput and latency; prints a table, writes JSON.
## Flags go in ARGS: make bench ARGS="--postgres --processes 2" (see bench/README.md).
ARGS ?=
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run $(ARGS)

## Try the broker against faults (kill -9, chaotic receivers, a full disk, failing fsync,
## SIGTERM, a soak, PostgreSQL faults); not part of `make test`. Flags go in ARGS:
## make torture ARGS="--short" or ARGS="--only kill9 --trials 20" (see torture/README.md).
torture: $(STAMP)
	$(BIN)/python -m torture.run $(ARGS)

clean:
	rm -rf $(VENV) mqpy-data .mypy_cache .ruff_cache .pytest_cache
