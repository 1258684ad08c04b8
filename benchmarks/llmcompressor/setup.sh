#!/usr/bin/env bash
# llmcompressor's own environment for benchmarks/prune_llmcompressor.py (PyTorch, not JAX: keep it
# out of the project's .venv, llmcompressor pins its own transformers).
#   bash benchmarks/llmcompressor/setup.sh [VENV_DIR]      (default /work/llmc-venv)
set -euo pipefail
VENV=${1:-/work/llmc-venv}
PY=${PYTHON:-python3.11}
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install --upgrade pip
# torch 2.13.0 from the registry; llmcompressor 0.14.0.1 is the version the tables were measured with
"$VENV/bin/pip" install torch==2.13.0 llmcompressor==0.14.0.1
"$VENV/bin/python" -c "import torch, llmcompressor, transformers; print('torch', torch.__version__, '| llmcompressor', llmcompressor.__version__, '| transformers', transformers.__version__)"
