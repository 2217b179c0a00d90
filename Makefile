# The few verbs a newcomer needs. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

BENCH_VENV := bench/.venv
BENCH_STAMP := $(BENCH_VENV)/.installed

.PHONY: run test lint mutation check-deploy bench bench-smoke screenshot clean

# The runtime dependencies at the image's exact pins (constraints.txt); dev tools float.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)  ## Run API + one worker (and a private redis-server when REDIS_URL is unset)
	bash scripts/run.sh

test: $(STAMP)  ## Run the whole test suite against real redis-server processes
	bash scripts/ensure-command.sh redis-server redis-server
	bash scripts/ensure-command.sh faketime faketime
	bash scripts/ensure-command.sh chromium chromium
	# pytest's cache beside the virtualenv: a test run leaves nothing behind in the checkout.
	$(BIN)/pytest -o cache_dir=$(VENV)/pytest-cache

# Not part of `test`: minutes, not seconds. Settings in pyproject.toml's [tool.mutmut].
# mutants/ is mutmut's work directory, started afresh: its cache can keep stale verdicts
# after the tests change.
mutation: $(STAMP)  ## Mutation-test the core modules against the fast tests (mutmut)
	bash scripts/ensure-command.sh redis-server redis-server
	rm -rf mutants
	$(BIN)/mutmut run --max-children 2
	$(BIN)/mutmut results

screenshot: $(STAMP)  ## Retake docs/dashboard.png (the headless-Chromium dashboard test, kept)
	bash scripts/ensure-command.sh redis-server redis-server
	bash scripts/ensure-command.sh chromium chromium
	DASHBOARD_SCREENSHOT=$(CURDIR)/docs/dashboard.png $(BIN)/pytest -q \
		tests/e2e/test_dashboard.py::test_headless_chromium_loads_the_dashboard

lint: $(STAMP) check-deploy  ## ruff + mypy --strict + the deployment files' checks
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

check-deploy: $(STAMP)  ## docker-compose.yml against the compose spec, hadolint on the Dockerfile
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
	$(BIN)/hadolint Dockerfile

$(BENCH_STAMP): pyproject.toml bench/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -e . -r bench/requirements.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)  ## Measure everything side by side with its baselines; writes docs/benchmarks.md
	bash scripts/ensure-command.sh redis-server redis-server
	bash scripts/ensure-command.sh wrk wrk
	$(BENCH_VENV)/bin/python -m bench.run

bench-smoke: $(BENCH_STAMP)  ## The same scripts at tiny sizes, in seconds (CI runs this)
	bash scripts/ensure-command.sh redis-server redis-server
	bash scripts/ensure-command.sh wrk wrk
	$(BENCH_VENV)/bin/python -m bench.run --smoke

clean:
	rm -rf $(VENV) $(BENCH_VENV) .data .pytest_cache .mypy_cache .ruff_cache bench/out mutants
