#!/usr/bin/env bash
# Install prunejax on every worker:  tpu_scripts/setup.sh NAME
# Each worker gets the repo at $REPO_REF and a venv with JAX's TPU build (the `tpu` extra).
source "$(dirname "$0")/common.sh"
NAME=$1
[ -n "$REPO_URL" ] || { echo "set REPO_URL to a git URL the workers can clone" >&2; exit 2; }
on_all_workers "$NAME" "set -e
  [ -d prunejax ] || git clone -q '$REPO_URL' prunejax
  cd prunejax && git fetch -q && git checkout -q '$REPO_REF'
  python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[tpu]'"
