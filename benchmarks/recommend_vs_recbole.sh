#!/usr/bin/env bash
# The recorded RecBole side-by-side, in parts (each resumable), under one shared lock:
#   bash benchmarks/recommend_vs_recbole.sh
# Order: RecBole's fast models, then tailorml, then LightGCN and SASRec (the slow ones, with
# wall-clock caps), then the table from all parts (benchmarks/results/recommend_vs_recbole_*.json).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE PYTHONPATH="$PWD"
PY=.venv/bin/python
B=benchmarks/recommend_vs_recbole.py
CAPS=(--max-seconds SASRec=11000)  # the 2026-12-06 record: SASRec capped at 11,000 s of training, the others uncapped
$PY $B --only recbole --models Pop ItemKNN BPR "${CAPS[@]}" "$@"
$PY $B --only tailorml "$@"
$PY $B --only recbole --models LightGCN SASRec "${CAPS[@]}" "$@"
$PY $B --only table "$@"
