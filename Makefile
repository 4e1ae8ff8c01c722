# Set-up, tests, service and benchmarks. `make install` first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODEL ?= insightface-opencv
MODELS_DIR ?= models
DATA_DIR ?= data
PORT ?= 8080
# ACCEPT_LICENSE=1 accepts a research-only model's licence; GALLERY=FILE adds a custom gallery.

.PHONY: install proto test readme-examples run bench-deps bench-accuracy bench-latency bench-pool bench-store soak

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'

proto:
	$(BIN)/python proto/generate.py

test:
	$(BIN)/python -m pytest -q

# Runs README's curl examples on the real pack and writes each response into README.md.
readme-examples:
	FACE_README_WRITE=1 $(BIN)/python -m pytest -q tests/test_readme.py -k run_as_documented

run:
	$(BIN)/python -m gallery ensure $(MODEL) --models-dir $(MODELS_DIR) $(if $(GALLERY),--gallery $(GALLERY)) \
		$(if $(filter 1 yes true,$(ACCEPT_LICENSE)),--accept-license)
	$(BIN)/python -m gateway --models-dir $(MODELS_DIR) --data-dir $(DATA_DIR) --port $(PORT) --default-model $(MODEL)

# The peer, face_recognition, goes in without its dependencies: it asks for `dlib`, which
# the bench extra provides as dlib-bin. BENCH_ARGS=--quick for a smoke run.
bench-deps:
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/pip install --quiet --no-deps face_recognition

bench-accuracy: bench-deps
	$(BIN)/python -m bench.accuracy $(BENCH_ARGS)

bench-latency: bench-deps
	$(BIN)/python -m bench.latency $(BENCH_ARGS)

# One multi-threaded backend against a pool of single-threaded ones; CPU per verify of a pair.
bench-pool:
	$(BIN)/python -m bench.pool $(BENCH_ARGS)

# Registry search at scale (synthetic galleries fitted to the real pack; pgvector via the
# pgserver wheel of the test extra). Long: BENCH_ARGS="--sizes 10000,100000" for less.
bench-store:
	$(BIN)/python -m bench.store_bench $(BENCH_ARGS)

# 8 clients of mixed routes against a real gateway for SOAK_SECONDS (default 120): errors,
# p95 per route and gateway+backend memory at start and end (growth under 10%: PASS).
soak:
	$(BIN)/python -m bench.soak
