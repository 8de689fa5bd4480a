# The few verbs people use. Everything runs inside .venv (created on first use).
#   make run [PROFILE=quick]   set up if needed, then run every notebook with papermill (MLFLOW=1: also log to MLflow)
#   make unit                  the edit-test loop: unit tests only, no notebook, no process launched (< 2 min)
#   make test                  set up if needed, then the gate CI runs: unit + launches + every notebook on smoke (< 10 min)
#   make test-all              make test + the slow tests + nbval (every notebook with its own defaults) (~20 min)
#   make lint                  ruff: lint and formatting of lib/, tests/ and notebooks/ (make format fixes what it can)
#   make lab                   JupyterLab from .venv (the notebooks' "python3" kernel is this project's Python)
#   make kernel                register this clone's .venv as a kernel for a JupyterLab you already have
#   make smoke                 = make run PROFILE=smoke (the < 5 min end-to-end check)
#   make clean-notebooks       strip outputs / execution counts from notebooks/ (before committing)
#   make clean                 remove outputs/ run results (keeps outputs/README.md)
#   make readme [RUN=id]       regenerate the README results block from a clean complete default run
#   make serve [ARGS=...]      serve the newest default run's chosen variant on http://127.0.0.1:8000 (11_serve's
#                              best settings for it; ARGS="--variant teacher --port 8001"; python -m lib.serve --help)
#   make runs                  list the runs (python -m lib.runner --runs; --compare A B; --delete ID; --html ID)
#                              every run folder gets report.html: the whole run on one page
#   make mlflow-ui             browse the MLflow store of `make run MLFLOW=1` runs

PYTHON ?= python3.11
PROFILE ?= default
VENV := .venv
BIN := $(VENV)/bin
# What gets installed: the project (editable, with test tools) under the exact pins of the lock file.
# environment.yml installs the very same arguments (tests/test_env.py keeps them equal).
PIP_ARGS := -c requirements/constraints.txt -e .[dev]
# A kernel name per clone (a hash of its path): registering a second clone never re-points the first one's kernel.
KERNEL := model-ux-lab-$(shell printf '%s' "$(CURDIR)" | cksum | cut -d' ' -f1)

.PHONY: install run smoke unit test test-all lint format lab kernel clean clean-notebooks lock readme runs mlflow-ui serve

$(BIN)/.installed: pyproject.toml requirements/constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(PIP_ARGS)
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/python -m lib.runner --profile $(PROFILE) $(if $(MLFLOW),--mlflow) $(ARGS)

smoke: install
	$(BIN)/python -m lib.runner --profile smoke

serve: install
	$(BIN)/python -m lib.serve $(ARGS)

# Test tiers (markers in pyproject.toml): `notebook` runs notebooks through papermill, `launch` starts processes
# (torchrun workers, a fresh process per timing), `slow` is only for test-all.
# `make test` runs both tiers side by side in two pytest workers, one test file per worker at a time (pytest-xdist,
# --dist loadfile): the smoke run (tests/test_notebooks.py) on one, every other file on the other; each worker and
# every notebook it runs uses one thread (MUXL_THREADS=1: two workers of two threads each would oversubscribe the
# two cores, 4x slower in a probe; the smoke run's last job, alone by then, at two). Measured on a 2-core Zen 4: see
# DEVELOPERS.md.
UNIT := not notebook and not launch and not slow
unit: install
	@start=$$(date +%s); $(BIN)/python -m pytest -m "$(UNIT)" $(ARGS); code=$$?; \
	echo "== make unit: $$(( $$(date +%s) - start ))s"; exit $$code

test: install
	@start=$$(date +%s); MUXL_THREADS=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not slow" -n 2 \
	--dist loadfile $(ARGS); code=$$?; echo "== make test (unit, launches and notebooks): $$(( $$(date +%s) - start ))s"; \
	exit $$code

test-all: install
	$(BIN)/python -m pytest tests notebooks --nbval-lax $(ARGS)

lint: install
	$(BIN)/ruff check lib tests notebooks conftest.py
	$(BIN)/ruff format --check lib tests notebooks conftest.py

format: install
	$(BIN)/ruff check --fix lib tests notebooks conftest.py
	$(BIN)/ruff format lib tests notebooks conftest.py

lab: install
	$(BIN)/jupyter lab notebooks/

# For a JupyterLab you already run elsewhere: pick "Python (Model UX Lab, <this folder>)" as the notebooks' kernel.
kernel: install
	$(BIN)/python -m ipykernel install --user --name $(KERNEL) --display-name "Python (Model UX Lab, $(CURDIR))"
	@echo "registered kernel $(KERNEL) -> $(BIN)/python"

runs: install
	$(BIN)/python -m lib.runner --runs

# Browse what `make run MLFLOW=1` logged (a local store, no server to set up): http://127.0.0.1:5000
mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/outputs/mlflow.db --port 5000

clean-notebooks: install
	$(BIN)/nbstripout notebooks/*.ipynb

clean:
	find outputs -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +

# Re-pin every package after changing pyproject.toml dependencies (review the diff before committing).
lock: install
	$(BIN)/python -m pip freeze --exclude-editable | sed 's/+cpu$$//' > requirements/constraints.txt

# Regenerate the README's results block from the latest complete run of $(PROFILE) (run `make run` first); it
# refuses a run with -p overrides, an unclean commit, a missing notebook, or one made by hand (and says which).
readme: install
	$(BIN)/python -m lib.runner --profile $(PROFILE) --readme $(or $(RUN),latest)
