# Every verb creates or updates .venv itself (re-installs when pyproject.toml changes).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: run test check bench demo docs fmt clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "canary needs Python 3.11+")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,docs]'
	@touch $(STAMP)

run: venv  ## the router in front of built-in simulated providers (or your real ones)
	$(BIN)/canary serve -c routes.yaml --simulators auto

# Coverage measures the test processes. `make test SUBPROCESS_COVERAGE=1` measures the
# `canary serve` / `simulate` the e2e tests start too (~96% against ~83%), but costs ~40%
# more CPU, and traced routers miss the Redis timeout in the replicas' load test.
COVERAGE_ENV = $(if $(SUBPROCESS_COVERAGE),COVERAGE_PROCESS_START=$(CURDIR)/pyproject.toml)

# The tests run in two processes, a file at a time each (pytest-xdist: about half the
# wall time on 2 cores); pytest-cov measures both and combines them.
TEST_WORKERS ?= 2

test: venv  ## unit, flow and end-to-end tests, under branch coverage (floor: fail_under)
	@rm -f .coverage .coverage.*
	$(COVERAGE_ENV) $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --cov --cov-report=
	$(BIN)/coverage report

check: venv  ## lint, format check, strict typing
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

demo: venv  ## watch a canary rolled back live (about a minute)
	$(BIN)/canary demo

bench: venv  ## direct vs through canary: rps, latency, router CPU per request
	$(BIN)/python bench/run.py

docs: venv  ## the docs site into site/ (mkdocs --strict), after regenerating the config reference
	$(BIN)/canary config schema > schema/routes.schema.json
	$(BIN)/canary config reference > docs/configuration.md
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

fmt: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) site *.egg-info .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* htmlcov
