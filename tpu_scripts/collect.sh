#!/usr/bin/env bash
# Copy a study's report (report.md, CSVs, figures, stages.json) from worker 0:
#   tpu_scripts/collect.sh NAME STUDY_DIR LOCAL_DIR
source "$(dirname "$0")/common.sh"
NAME=$1 OUT=$2 LOCAL=$3
mkdir -p "$LOCAL"
case "$OUT" in
  gs://*) gcloud storage cp "$OUT/report.md" "$OUT/*.csv" "$OUT/*.png" "$OUT/stages.json" "$LOCAL/" ;;
  *) for f in report.md results.csv comparison.csv figure1_left.png figure1_right.png stages.json; do
       gcloud compute tpus tpu-vm scp "$NAME:prunejax/$OUT/$f" "$LOCAL/" --zone "$ZONE" --project "$PROJECT" --worker=0 || true
     done ;;
esac
