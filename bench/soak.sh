#!/usr/bin/env bash
# `make soak`: the reliability campaign at full counts, then the README's Reliability table.
#   - SIGKILL trials (20), stateful property runs, hostile input, 60 s at 3x overload, storage
#     faults, security, retention — all through pytest with COORDSTATE_SOAK=1;
#   - coverage-guided fuzzing with atheris over the OTLP decoders and the model loader
#     (FUZZ_SECONDS per target, 600 by default: >= 10 minutes in all).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
REPORT=$(mktemp)
FUZZ_SECONDS=${FUZZ_SECONDS:-600}
$PY -m pip install --quiet 'atheris>=2.3'
COORDSTATE_SOAK=1 COORDSTATE_RELIABILITY_REPORT="$REPORT" $PY -m pytest -q tests/reliability
per_target=$(( FUZZ_SECONDS / 3 ))
for target in otlp_protobuf otlp_json model; do
  work=$(mktemp -d)
  cp tests/reliability/corpus/$target/* "$work/"
  log=$(mktemp)
  if $PY tests/reliability/fuzz.py "$target" -max_total_time="$per_target" -artifact_prefix="$work/crash-" "$work" >"$log" 2>&1; then
    crashes=0
  else
    crashes=1
    tail -40 "$log"
  fi
  runs=$(grep -Eo 'Done [0-9]+ runs' "$log" | grep -Eo '[0-9]+' || echo 0)
  echo "{\"check\": \"fuzz\", \"target\": \"$target\", \"seconds\": $per_target, \"runs\": $runs, \"crashes\": $crashes}" >> "$REPORT"
  rm -rf "$work" "$log"
done
$PY bench/reliability_table.py "$REPORT"
