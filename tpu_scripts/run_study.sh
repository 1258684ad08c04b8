#!/usr/bin/env bash
# Create a slice, set it up, dry-run then run a study config on it, collect the report, delete it:
#   tpu_scripts/run_study.sh TYPE CONFIG STUDY_DIR [NAME]     (keep the slice: KEEP=1)
#   tpu_scripts/run_study.sh v4-256 configs/study/paper.yaml gs://YOUR-BUCKET/paper
# STUDY_DIR: gs://BUCKET/PATH, or a path every worker shares (see run.sh). The report lands in
# ./$(basename STUDY_DIR).
source "$(dirname "$0")/common.sh"
TYPE=$1 CONFIG=$2 OUT=$3 NAME=${4:-prunejax-$USER}
here=$(dirname "$0")
"$here/create.sh" "$NAME" "$TYPE"
trap '[ "${KEEP:-0}" = 1 ] || "$here/delete.sh" "$NAME"' EXIT
"$here/setup.sh" "$NAME"
"$here/run.sh" "$NAME" study "$CONFIG" --out "$OUT" --dry-run
"$here/run.sh" "$NAME" study "$CONFIG" --out "$OUT"
"$here/collect.sh" "$NAME" "$OUT" "./$(basename "$OUT")"
