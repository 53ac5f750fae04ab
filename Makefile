# Plant-ID KFP pipeline. `make run` and `make test` set themselves up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)
CONFIG ?= config/local.yaml
CLUSTER_CONFIG ?= config/cluster.yaml
OUTPUT ?= outputs/local
KFP_HOST ?=
PARAMS ?=
# PARAMS and CRON reach the command through the environment, so their quotes and spaces stay as given.
export PARAMS CRON

.PHONY: setup export-env run run-containers test compile submit schedule images bench bench-scale bench-export sample-data manifests stage-weights clean

setup: $(VENV)/.stamp export-env

$(VENV)/.stamp: requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	touch $@

# The converter environment (.venv-export), TF.js for Node and Chromium for the browser test.
export-env:
	bash scripts/setup_export_env.sh

sample-data: $(VENV)/.stamp
	$(PY) -m shared.data.sample_data --output data/sample

run: setup sample-data
	$(PY) pipeline.py run-local --config $(CONFIG) --output $(OUTPUT)

test: setup
	$(PY) -m pytest tests

compile: $(VENV)/.stamp
	$(PY) pipeline.py compile --config $(CLUSTER_CONFIG) --output pipeline.yaml

# The pipeline's CPU steps at the plan's size (741,533 records, 9,000 species) and a quarter of it:
# seconds and peak RSS per step -> bench/results.json (key "scale"). About 5 minutes on 2 cores.
bench-scale: $(VENV)/.stamp
	$(PY) -m bench.bench_scale --output bench/results.json

# The plan's student at its real size (MobileNetV2-224, 9,000 classes, backbone trained briefly
# on synthetic images, head fitted on synthetic classes) exported in every quantization mode: bundle MB, parity on 1,000 images, Chromium WASM
# latency, and the mode quantization auto picks -> bench/results.json (key "export_9000").
# About 20 minutes on 2 cores.
bench-export: setup
	$(PY) -m bench.bench_export --output bench/results.json

# Download every model's pretrained weights into the weights cache (WEIGHTS_CACHE, default: the
# config's weights.cache_dir); for an air-gapped cluster run it where the hub is reachable, copy
# the directory onto the cluster's volume (or bucket), and pin the printed sha256 values.
stage-weights: $(VENV)/.stamp
	$(PY) pipeline.py stage-weights --config $(CLUSTER_CONFIG) $(if $(WEIGHTS_CACHE),--cache $(WEIGHTS_CACHE))

bench: setup
	$(PY) -m bench.run --output bench/results.json

# GitOps: regenerate manifests/overlays/*/{tenancy,pipeline}.yaml (tenancy objects by cluster.mode,
# Pipeline + PipelineVersion from the compiled DAG). Images by the digests of images/digests.yaml
# (make images PUSH=1); prod only when every image has one (otherwise it says which to push).
manifests: $(VENV)/.stamp
	$(PY) scripts/render_manifests.py --config $(CLUSTER_CONFIG)

# Build (and with PUSH=1 push) the data, train and export images with docker or podman, named
# as CONFIG_IMAGES's pipeline.images says. PUSH=1 also writes images/digests.yaml (make manifests
# pins them). PYTHON_BASE / NODE_BASE: base-image mirror; BASES=local: Debian-built stand-ins
# (no registry reachable); EXTRA_CA_CERTS=FILE: a proxy's CA bundle (build secret);
# TORCH_INDEX_URL: torch's CUDA flavour. See images/README.md.
IMAGES_CONFIG ?= $(CLUSTER_CONFIG)
images: $(VENV)/.stamp
	CONFIG=$(IMAGES_CONFIG) bash scripts/build_images.sh $(if $(PUSH),--push) $(if $(TAG),--tag $(TAG))

# The local DAG in the three images (kfp.local.DockerRunner over Docker or podman): builds
# them first (layer cache: seconds when nothing changed), ends like `make run`.
CONTAINER_OUTPUT ?= outputs/containers
run-containers: setup sample-data
	CONFIG=$(CONFIG) bash scripts/build_images.sh
	$(PY) pipeline.py run-containers --config $(CONFIG) --output $(CONTAINER_OUTPUT) --data-dir data

# The last local run's TF.js bundle served with cross-origin isolation (WASM threads) and the
# wasm content type: http://127.0.0.1:8000/ (BUNDLE=dir, PORT=n for another).
BUNDLE ?= outputs/local/tfjs_model
PORT ?= 8000
demo: $(VENV)/.stamp
	$(PY) pipeline.py serve-demo --bundle $(BUNDLE) --port $(PORT)

# make submit [KFP_HOST=https://.../pipeline] [EXPERIMENT=...] [RUN_NAME=...] [NAMESPACE=...] [SERVICE_ACCOUNT=...]
#             [PARAMS='quantization=uint8 regional_teachers=[{"teacher": "EU_SW", ...}]'] [DRY_RUN=1] [WAIT=1 [TIMEOUT=s]]
# No KFP_HOST: $$KF_PIPELINES_ENDPOINT. PARAMS: NAME=VALUE items split on spaces outside brackets and quotes.
# DRY_RUN=1 compiles, checks and prints what would be sent; WAIT=1 follows the run and fails when it fails.
SUBMIT_ARGS = --config $(CLUSTER_CONFIG) $(if $(KFP_HOST),--host "$(KFP_HOST)") \
	$(if $(EXPERIMENT),--experiment "$(EXPERIMENT)") $(if $(RUN_NAME),--run-name "$(RUN_NAME)") \
	$(if $(NAMESPACE),--namespace "$(NAMESPACE)") $(if $(SERVICE_ACCOUNT),--service-account "$(SERVICE_ACCOUNT)") \
	--params "$$PARAMS" $(if $(DRY_RUN),--dry-run)
submit: $(VENV)/.stamp
	$(PY) pipeline.py submit $(SUBMIT_ARGS) $(if $(WAIT),--wait) $(if $(TIMEOUT),--timeout $(TIMEOUT))

# make schedule CRON="0 3 * * 0" [the submit variables but WAIT]: a recurring run (5-field cron, or KFP's 6 fields).
schedule: $(VENV)/.stamp
	$(PY) pipeline.py schedule $(SUBMIT_ARGS) --cron "$$CRON"

clean:
	rm -rf outputs data/sample
