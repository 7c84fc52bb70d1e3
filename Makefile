# ecgssl - two commands on a fresh machine:
#   make demo   installs (.venv) then runs the whole pipeline on the bundled real sample
#   make test   installs (.venv) then runs the test suite (everything except GPU and nightly tests)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90

.PHONY: install demo test test-fast test-nightly lint bench ui clean clean-all stack-up stack-down stack-status

# (Re)create the venv when it is missing or older than the dependency files. Plain pip (not uv): pip's
# configuration picks the right torch build; the constraints file pins torch.
$(STAMP): pyproject.toml constraints.txt
	@echo "Installing ecgssl and its dependencies into $(VENV) (torch, prefect, mlflow, ...): a few minutes the first time."
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e ".[dev]"
	touch $(STAMP)
	@echo "Installed. To use the commands directly: source $(VENV)/bin/activate   (then: ecgssl --help)"

install: $(STAMP)

demo: $(STAMP)
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db} \
	PREFECT_HOME=$${PREFECT_HOME:-$(CURDIR)/.prefect} \
	DASK_TEMPORARY_DIRECTORY=$${DASK_TEMPORARY_DIRECTORY:-$(CURDIR)/.demo/dask} \
	$(BIN)/ecgssl pipeline --demo

test: $(STAMP)
	$(BIN)/python -m pytest -m "not gpu and not nightly" $(PYTEST_ARGS)

# the long runs through the whole local stack (pipeline-demo, ingest with a server restart or a worker killed)
test-nightly: $(STAMP)
	$(BIN)/python -m pytest -m "nightly" $(PYTEST_ARGS)

# the production stack as processes on this machine (infra/local; state in $$ECGSSL_STACK_DIR, default .stack/)
stack-up: $(STAMP)
	infra/local/stack.sh up

stack-down:
	infra/local/stack.sh down

stack-status:
	infra/local/stack.sh status

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not gpu and not server" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

ui: $(STAMP)
	$(BIN)/ecgssl ui

# `make clean`: the environment and what the demo and local runs wrote (.demo/, ./mlflow.db, Prefect's local
# state). It says what it keeps: downloads and the store (data/), checkpoints (runs/) and the MLflow server's
# runs and artifacts take hours to rebuild; `make clean-all` removes them too.
KEPT := data runs mlartifacts mlflow-server.db

clean:
	rm -rf $(VENV) .demo .prefect mlflow.db mlruns
	@kept="$$(for p in $(KEPT); do [ -e "$$p" ] && printf ' %s' "$$p"; done)"; \
	if [ -n "$$kept" ]; then echo "kept:$$kept (downloads, checkpoints, MLflow server data): make clean-all removes them"; fi

clean-all: clean
	rm -rf $(KEPT)
