# Plant-ID KFP pipeline. `make run` and `make test` set themselves up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)
CONFIG ?= config/local.yaml
OUTPUT ?= outputs/local

.PHONY: setup run test compile submit images bench sample-data manifests clean

setup: $(VENV)/.stamp

$(VENV)/.stamp: requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	touch $@

sample-data: setup
	$(PY) -m shared.sample_data --output data/sample

run: setup sample-data
	$(PY) pipeline.py run-local --config $(CONFIG) --output $(OUTPUT)

test: setup
	$(PY) -m pytest tests

compile: setup
	$(PY) pipeline.py compile --config $(CONFIG) --output pipeline.yaml

bench: setup
	$(PY) -m bench.run --output bench/results.json

clean:
	rm -rf outputs data/sample
