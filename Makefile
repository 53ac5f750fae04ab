# Plant-ID KFP pipeline. `make run` and `make test` set themselves up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)
CONFIG ?= config/local.yaml
CLUSTER_CONFIG ?= config/cluster.yaml
OUTPUT ?= outputs/local
HOST ?=
PARAMS ?=

.PHONY: setup export-env run test compile submit images bench sample-data manifests clean

setup: $(VENV)/.stamp export-env

$(VENV)/.stamp: requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	touch $@

# The converter environment (.venv-export), TF.js for Node and Chromium for the browser test.
export-env:
	bash scripts/setup_export_env.sh

sample-data: $(VENV)/.stamp
	$(PY) -m shared.sample_data --output data/sample

run: setup sample-data
	$(PY) pipeline.py run-local --config $(CONFIG) --output $(OUTPUT)

test: setup
	$(PY) -m pytest tests

compile: $(VENV)/.stamp
	$(PY) pipeline.py compile --config $(CLUSTER_CONFIG) --output pipeline.yaml

bench: setup
	$(PY) -m bench.run --output bench/results.json

clean:
	rm -rf outputs data/sample
