#!/usr/bin/env bash
# Install prunejax on every worker:  tpu_scripts/setup.sh NAME
# Each worker gets the repo at $REPO_REF and a venv with JAX's TPU build (the `tpu` extra, gcsfs included
# for gs:// paths). prunejax needs Python >= 3.11; the TPU VM image's python3 is Ubuntu 22.04's 3.10.
source "$(dirname "$0")/common.sh"
NAME=$1
[ -n "$REPO_URL" ] || { echo "set REPO_URL to a git URL the workers can clone" >&2; exit 2; }
on_all_workers "$NAME" "set -e
  command -v python3.11 >/dev/null || { sudo apt-get update -q && sudo apt-get install -y -q python3.11 python3.11-venv; }
  [ -d prunejax ] || git clone -q '$REPO_URL' prunejax
  cd prunejax && git fetch -q && git checkout -q '$REPO_REF'
  python3.11 -m venv .venv && .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[tpu]'"
