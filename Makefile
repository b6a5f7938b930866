# tailrank: the user's whole interface.
#   make serve   fresh clone -> venv, data, features, Feast, model, gRPC server on :50051
#   make test    the full test suite (what CI runs)
# Bring your own data: make serve DATA=path/to/folder  (see README "Your own data").
# Every data set has its own tables (data/<name>), features, Feast config, registry and
# online store (feature_repo/data/<name>) and model (artifacts/<name>): switching DATA
# rebuilds nothing of another data set, and switching back rebuilds nothing at all.
# The online store: STORE=sqlite (default, a file per data set), STORE=postgres
# (feature_repo/feature_store.postgres.yaml, TAILRANK_PG_* in the environment) or
# STORE=redis (feature_repo/feature_store.redis.yaml; TAILRANK_REDIS_HOST/_PORT/_PASSWORD,
# default 127.0.0.1:6379 without a password).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
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
FEATURES := feature_repo/data/$(NAME)
RUN_DIR := artifacts/$(NAME)
# evaluation protocol (DESIGN.md): features from the train split only, never the served ones
EVAL_FEATURES := $(DATA_DIR)/features_eval
EVAL_RUN := artifacts/$(NAME)-eval

STORE ?= sqlite
STORE_TEMPLATE := feature_repo/feature_store$(if $(filter sqlite,$(STORE)),,.$(STORE)).yaml
ifeq ($(wildcard $(STORE_TEMPLATE)),)
$(error STORE=$(STORE): no $(STORE_TEMPLATE); use STORE=sqlite, STORE=postgres or STORE=redis)
endif
# the data set's own Feast config (written from the template by training.feast_repo)
FS_YAML := $(FEATURES)/$(notdir $(STORE_TEMPLATE))
MATERIALIZED := $(FEATURES)/.materialized-$(STORE)
MATERIALIZE := $(PY) -m training.feast_repo --repo feature_repo --features $(FEATURES) \
	--template $(STORE_TEMPLATE) --name $(NAME)
PORT ?= 50051
METRICS_PORT ?= 9100

.PHONY: install install-gpu data features materialize materialize-store model evaluate serve \
	test lint protos bench scale clean help

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

materialize: $(MATERIALIZED)  ## feast apply + feast materialize into the data set's online store

$(MATERIALIZED): $(FEATURES)/item_features.parquet $(wildcard feature_repo/*.py) $(STORE_TEMPLATE)
	$(MATERIALIZE)
	touch $@

# Another online store for features that are built already (make materialize-store
# STORE=postgres): apply + materialize again, whatever the stamps say, and nothing else.
materialize-store: | $(FEATURES)/item_features.parquet  ## re-apply + re-materialize only (STORE=...)
	$(MATERIALIZE)
	touch $(MATERIALIZED)

model: $(RUN_DIR)/model.onnx  ## train the deployment model and export it to ONNX

$(RUN_DIR)/checkpoint.pt: $(DATA_DIR)/interactions.parquet $(FEATURES)/item_features.parquet
	$(PY) -m training.train --data $(DATA_DIR) --features $(FEATURES) --mode deploy --out $(RUN_DIR)

$(RUN_DIR)/model.onnx: $(RUN_DIR)/checkpoint.pt
	$(PY) -m training.export --run $(RUN_DIR)

evaluate: $(EVAL_RUN)/checkpoint.pt  ## eval-mode model (train split) vs baselines, DESIGN.md protocol
	$(PY) -m training.evaluate --run $(EVAL_RUN)

$(EVAL_FEATURES)/item_features.parquet: $(DATA_DIR)/interactions.parquet
	$(PY) -m training.features --data $(DATA_DIR) --out $(EVAL_FEATURES) --mode eval

$(EVAL_RUN)/checkpoint.pt: $(DATA_DIR)/interactions.parquet $(EVAL_FEATURES)/item_features.parquet
	$(PY) -m training.train --data $(DATA_DIR) --features $(EVAL_FEATURES) --mode eval --out $(EVAL_RUN)

serve: $(RUN_DIR)/model.onnx $(MATERIALIZED)  ## everything above, then the gRPC server
	$(PY) -m serving --repo feature_repo --fs-yaml $(FS_YAML) --model $(RUN_DIR) \
	  --port $(PORT) --metrics-port $(METRICS_PORT)

test: $(STAMP)  ## the full test suite (pytest exit 5, "no tests ran", fails too)
	$(PY) protos/generate.py --check
	$(PY) -m pytest; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; fi; exit $$rc

lint: $(STAMP)  ## ruff check and format check, then the layer contracts (import-linter)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

protos: $(STAMP)  ## regenerate the checked-in gRPC stubs under serving/api
	$(PY) protos/generate.py

bench: $(RUN_DIR)/model.onnx $(MATERIALIZED)  ## every benchmark of docs/BENCHMARKS.md (tens of minutes)
	$(PY) -m benchmarks.run

# The synthetic shop at SIZES (10k 100k 1m, docs/BENCHMARKS.md "Scale") through this
# Makefile's pipeline, each stage measured; SCALE_ARGS adds flags (--train-steps 200 ...).
SIZES ?= 10k
SCALE_ARGS ?=
scale: | $(STAMP)  ## scale benchmark: data -> serving at SIZES=10k|100k|1m (minutes to hours)
	$(PY) -m benchmarks.scale --sizes $(SIZES) --json artifacts/scale/scale.json $(SCALE_ARGS)

clean:  ## remove built data, features and models of every data set (keeps .venv)
	rm -rf data artifacts runs
	find feature_repo/data -mindepth 1 ! -name .gitkeep -delete

.PHONY: mutation
mutation: $(STAMP)  ## mutation testing of core/ and the request/event checks, score per module (~5 min)
	$(PY) -m benchmarks.mutation
