# One entry point per job. `make demo` and `make test` install what they need first.
SHELL := /bin/bash
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: install demo stop status ledger bench airflow lock test test-unit test-dags test-e2e lint typecheck clean \
	stack stack-down stack-validate

$(STAMP): requirements.lock pyproject.toml
	python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet "uv>=0.4"
	python3 -m uv venv --quiet --allow-existing --python 3.11 .venv
	@# torch==2.13.0+cpu comes from the machine's local wheel folder; everything else from PyPI. Bytecode is
	@# compiled at install: uv does not by default, and where PYTHONDONTWRITEBYTECODE is set (this machine, CI)
	@# every process compiled every module it imported again (1-3 s per Airflow task, per test subprocess)
	python3 -m uv pip sync --quiet --compile-bytecode --python $(PY) --find-links /opt/wheels requirements.lock
	python3 -m uv pip install --quiet --python $(PY) --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)  ## create .venv from the lock (uv), the project installed editable

demo: install  ## start Airflow, MLflow UI and the model server; run the bike-demand story, then adult income
	$(PY) scripts/demo.py run

stop:  ## stop what `make demo` started
	@[ -x $(PY) ] && $(PY) scripts/demo.py stop || echo "nothing to stop"

status: install
	$(PY) scripts/demo.py status

bench: install  ## monitoring, validation and training vs scipy / pandas / bare LightGBM at 1e4..1e6 rows (not in make test)
	$(PY) scripts/bench.py $(ARGS)

ledger: install  ## the demo stack's promotion ledger (who promoted, rolled back or lost, when and why)
	$(PY) scripts/demo.py ledger $(ARGS)

airflow: install  ## the Airflow CLI against the demo stack, e.g. make airflow CMD="dags list"
	$(PY) scripts/demo.py airflow $(CMD)

stack: install  ## validate docker-compose.yaml, build, start it (docker compose or podman-compose), wait for health, print the URLs
	$(PY) scripts/stack.py up $(ARGS)

stack-down:  ## stop what `make stack` started (volumes kept; ARGS=--volumes removes them too)
	@[ -x $(PY) ] && $(PY) scripts/stack.py down $(ARGS) || echo "nothing to stop (no .venv)"

stack-validate: install  ## docker-compose.yaml (+ the local override) against the Compose specification
	$(PY) scripts/stack.py validate

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: install
	$(PY) -m mypy

test-unit: install
	$(PY) -m pytest tests/unit

test-dags: install
	$(PY) -m pytest tests/dags

test-e2e: install
	$(PY) -m pytest tests/e2e

TEST_WORKERS ?= 2
test: install lint typecheck  ## everything CI runs: lint, types, unit, DAG integrity, end to end (TEST_WORKERS=2 xdist workers; tests/conftest.py says how tests are shared out)
	$(PY) -m pytest -n $(TEST_WORKERS)

lock:  ## re-resolve requirements.lock from pyproject.toml
	python3 -m uv pip compile pyproject.toml --group dev --group test --python-version 3.11 --find-links /opt/wheels -o requirements.lock

clean: stop
	rm -rf .local .venv .pytest_cache .mypy_cache .ruff_cache
