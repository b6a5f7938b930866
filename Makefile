# tailrank: the user's whole interface.
#   make serve   fresh clone -> venv, data, features, Feast, model, gRPC server on :50051
#   make test    the full test suite (what CI runs)
# Bring your own data: make serve DATA=path/to/folder  (see README "Your own data").

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FEAST := $(VENV)/bin/feast
STAMP := $(VENV)/.installed

DATASET ?= movielens-100k
DATA ?=
ifneq ($(strip $(DATA)),)
NAME := $(notdir $(abspath $(DATA)))
SOURCE_ARGS := --data $(DATA)
else
NAME := $(DATASET)
SOURCE_ARGS := --dataset $(DATASET)
endif
DATA_DIR := data/$(NAME)
FEATURES := feature_repo/data
RUN_DIR := artifacts/$(NAME)
PORT ?= 50051
METRICS_PORT ?= 9100

.PHONY: install install-gpu data features materialize model serve test lint protos bench clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install: $(STAMP)  ## create .venv and install tailrank with its training and dev extras

# torch is installed first and pinned: the CPU 2.13.0 build lies on the dev machines' disk.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[train,dev]'
	touch $@

install-gpu: $(STAMP)  ## swap the CPU onnxruntime for onnxruntime-gpu (CUDA provider)
	$(PY) -m pip uninstall -y onnxruntime
	$(PY) -m pip install -q -e '.[gpu]'

data: $(DATA_DIR)/interactions.parquet  ## validate and split the data set

$(DATA_DIR)/interactions.parquet: | $(STAMP)
	$(PY) -m training.data $(SOURCE_ARGS) --out $(DATA_DIR)

features: $(FEATURES)/item_features.parquet  ## content vectors, item stats, user histories

$(FEATURES)/item_features.parquet: $(DATA_DIR)/interactions.parquet
	$(PY) -m training.features --data $(DATA_DIR) --out $(FEATURES)

materialize: $(FEATURES)/.materialized  ## feast apply + feast materialize into the online store

$(FEATURES)/.materialized: $(FEATURES)/item_features.parquet $(wildcard feature_repo/*.py) feature_repo/feature_store.yaml
	cd feature_repo && ../$(FEAST) apply
	cd feature_repo && ../$(FEAST) materialize 1970-01-01T00:00:00 $$(date -u +%Y-%m-%dT%H:%M:%S)
	touch $@

model: $(RUN_DIR)/model.onnx  ## train the deployment model and export it to ONNX

$(RUN_DIR)/checkpoint.pt: $(DATA_DIR)/interactions.parquet $(FEATURES)/item_features.parquet
	$(PY) -m training.train --data $(DATA_DIR) --features $(FEATURES) --mode deploy --out $(RUN_DIR)

$(RUN_DIR)/model.onnx: $(RUN_DIR)/checkpoint.pt
	$(PY) -m training.export --run $(RUN_DIR)

serve: $(RUN_DIR)/model.onnx $(FEATURES)/.materialized  ## everything above, then the gRPC server
	$(PY) -m serving --repo feature_repo --model $(RUN_DIR) --port $(PORT) --metrics-port $(METRICS_PORT)

test: $(STAMP)  ## the full test suite (pytest exit 5, "no tests ran", fails too)
	$(PY) protos/generate.py --check
	$(PY) -m pytest; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; fi; exit $$rc

lint: $(STAMP)  ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

protos: $(STAMP)  ## regenerate the checked-in gRPC stubs under serving/api
	$(PY) protos/generate.py

bench: $(RUN_DIR)/model.onnx $(FEATURES)/.materialized  ## every benchmark of docs/BENCHMARKS.md (tens of minutes)
	$(PY) -m benchmarks.run

clean:  ## remove built data, features and models (keeps .venv)
	rm -rf data artifacts runs
	find $(FEATURES) -mindepth 1 ! -name .gitkeep -delete

.PHONY: mutation
mutation: $(STAMP)  ## mutation testing of core/ and the request/event checks, score per module (~5 min)
	$(PY) -m benchmarks.mutation
