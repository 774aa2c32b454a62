# wre — the two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck services demo install clean bench

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

demo: install
	$(BIN)/wre demo

# Every benchmark (about 15 minutes): figures and PASS/FAIL bars on stdout; docs/BENCHMARKS.md has the latest.
bench: install services
	@status=0; for name in throughput io_concurrency latency memory self_improvement evaluate_scale promotion_quality srm; do \
		$(BIN)/python -m bench.$$name || status=1; \
	done; exit $$status

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache wre.db
