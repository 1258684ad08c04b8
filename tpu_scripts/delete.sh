#!/usr/bin/env bash
# Delete a TPU VM / slice:  tpu_scripts/delete.sh NAME
source "$(dirname "$0")/common.sh"
gcloud compute tpus tpu-vm delete "$1" --zone "$ZONE" --project "$PROJECT" --quiet
