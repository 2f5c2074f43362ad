#!/bin/bash
# The accuracy study on CPU, in priority order (about 90 min on a shared
# 2-core machine). Each (task, configuration) is appended to
# examples/benchmarks/results/accuracy_<task>.json as it finishes; rerunning
# skips what is done. The CNN tasks run a subset of the configurations to fit
# the time budget.
set -u
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
export PYTHONPATH=examples:examples/benchmarks:${PYTHONPATH:-}
run() { $PY examples/benchmarks/accuracy_study.py "$@"; }
SUBSET=adam,sgdm,muon,ko_soft_adam,ko_soft_sgd,ko_hard_adam
run --task mnist1d_mlp --groups main
run --task condense_mlp --groups main
run --task mnist1d_cnn --groups main --only $SUBSET
run --task digits_cnn --groups main --only $SUBSET
run --task condense_mlp --groups variants
run --task mnist1d_mlp --groups variants
run --task mnist1d_mlp --groups stability
run --task mnist1d_cnn --groups main
run --task digits_cnn --groups main
