#!/usr/bin/env bash
# Copy a study's report (report.md, results.csv, comparison.csv, figures, stages.json) to LOCAL_DIR:
#   tpu_scripts/collect.sh NAME STUDY_DIR LOCAL_DIR
# A gs:// STUDY_DIR is read from the bucket; any other from worker 0 (relative to its ~/prunejax checkout).
source "$(dirname "$0")/common.sh"
NAME=$1 OUT=$2 LOCAL=$3
mkdir -p "$LOCAL"
case "$OUT" in
  gs://*) gcloud storage cp "$OUT/report.md" "$OUT/*.csv" "$OUT/*.png" "$OUT/stages.json" "$LOCAL/" ;;
  *) case "$OUT" in /*) REMOTE=$OUT ;; *) REMOTE=prunejax/$OUT ;; esac
     for f in report.md results.csv comparison.csv figure1_left.png figure1_right.png stages.json; do
       gcloud compute tpus tpu-vm scp "$NAME:$REMOTE/$f" "$LOCAL/" --zone "$ZONE" --project "$PROJECT" --worker=0 || true
     done ;;
esac
