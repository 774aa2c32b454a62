# wre — the two commands a newcomer needs: `make demo` and `make test` (and `make test-fast`, no services).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-fast lint typecheck services demo install clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the project's dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

services:
	@scripts/ensure-services.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy db worker scheduler wre

# Two test processes side by side (pytest-xdist), a module each at a time: most of the suite waits on real
# worker, beat and broker processes, so two sessions overlap their waits on two cores. TEST_WORKERS=0 runs
# one session, in order.
TEST_WORKERS ?= 2

test: install services lint
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadscope

# The pure parts only (no Postgres, Redis, RabbitMQ or processes): policies, guard, health, units, the
# complete-prefix rule, ReAct, retries, scoring, skills, settings, agents, evolvers, the group commit's queue.
FAST_TESTS := tests/unit tests/bench/test_cohorts.py

test-fast: install
	$(BIN)/pytest -q -n $(TEST_WORKERS) $(FAST_TESTS)

demo: install
	$(BIN)/wre demo

# Every benchmark (some 90 minutes, an hour of it the seed's gate): figures and PASS/FAIL bars on stdout; docs/BENCHMARKS.md has the latest.
BENCHES := throughput io_concurrency latency memory self_improvement evaluate_scale promotion_quality \
	promotion_mechanisms srm

bench: install services
	@status=0; for name in $(BENCHES); do \
		$(BIN)/python -m bench.$$name || status=1; \
	done; exit $$status

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache wre.db
