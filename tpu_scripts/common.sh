#!/usr/bin/env bash
# Shared settings for the gcloud wrappers. Override by exporting before calling a script.
set -euo pipefail
: "${ZONE:=us-central2-b}"                 # v4 lives in us-central2-b; v5e/v5p elsewhere
: "${PROJECT:=$(gcloud config get-value project 2>/dev/null)}"
: "${REPO_URL:=$(git -C "$(dirname "$0")/.." remote get-url origin 2>/dev/null || echo)}"
: "${REPO_REF:=main}"
runtime_for() {  # TPU software version for an accelerator type
  case "$1" in
    v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-*|v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    *) echo "unknown accelerator type $1" >&2; exit 2 ;;
  esac
}
on_all_workers() {  # NAME COMMAND: run COMMAND on every worker of the TPU VM / pod slice
  gcloud compute tpus tpu-vm ssh "$1" --zone "$ZONE" --project "$PROJECT" --worker=all --command "$2"
}
