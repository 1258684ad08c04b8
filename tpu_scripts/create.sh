#!/usr/bin/env bash
# Create a TPU VM or pod slice:  tpu_scripts/create.sh NAME TYPE   (TYPE: v4-8, v4-256, v5litepod-16, v5p-64, ...)
source "$(dirname "$0")/common.sh"
NAME=$1 TYPE=$2
gcloud compute tpus tpu-vm create "$NAME" --zone "$ZONE" --project "$PROJECT" \
  --accelerator-type "$TYPE" --version "$(runtime_for "$TYPE")"
