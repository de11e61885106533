# Two commands on a fresh machine:  make demo   and   make test
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: demo test setup setup-dev bench lint models clean

$(VENV)/.runtime: pyproject.toml scripts/setup-system.sh
	bash scripts/setup-system.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[bench]'
	bash scripts/select-onnxruntime.sh $(PY)
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	bash scripts/setup-system.sh --test
	$(PIP) install -q -e '.[dev]'
	# fer is the speed/accuracy peer of the benchmark: without its deps it needs no torch.
	$(PIP) install -q --no-deps fer==25.10.3
	touch $@

setup: $(VENV)/.runtime
setup-dev: $(VENV)/.dev

demo: setup
	$(PY) -m stream run --no-display --no-progress
	@echo "demo: the annotated video and the event log are in out/"

test: setup-dev
	$(PY) -m pytest -q

lint: setup-dev
	$(VENV)/bin/ruff check stream training tests benchmarks models
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/fps.py

models: setup-dev
	$(PY) models/build.py

clean:
	rm -rf out .pytest_cache
