#!/bin/bash
# The accuracy study on CPU as it was run for docs/benchmarks.md (about 90
# min on a shared 2-core machine). Each (task, configuration) is appended to
# examples/benchmarks/results[/variants]/accuracy_<task>.json as it finishes;
# rerunning skips what is done. report_accuracy.py makes the tables.
set -u
cd "$(dirname "$0")/../../.."
PY=${PYTHON:-python3}
export PYTHONPATH=.:${PYTHONPATH:-}
run() { $PY examples/benchmarks/accuracy/accuracy_study.py "$@"; }
# MLP tasks: every optimizer, full grid (lr x collision rate), 5 seeds.
run --task mnist1d_mlp --groups main
run --task condense_mlp --groups main
# The method's open questions (docs/method.md: diagonal, threshold, normalisation, last
# layer only, noise) and large rates, in a separate folder.
run --task condense_mlp --groups variants --out examples/benchmarks/results/variants
run --task mnist1d_mlp --groups stability --out examples/benchmarks/results/variants
run --task mnist1d_mlp --groups variants --only "ko_soft_adam/norm,ko_soft_adam@last" \
  --out examples/benchmarks/results/variants2
# Collisions on the base's velocity (momentum buffer) instead of the gradient.
for t in mnist1d_mlp condense_mlp; do
  run --task $t --groups velocity --out examples/benchmarks/results/velocity
done
# KO-hard rerun on the current hard collision (per-pair direction keys): same
# configurations and seeds, other random numbers; a check that the results hold.
for t in mnist1d_mlp condense_mlp; do
  run --task $t --only ko_hard_adam,ko_hard_sgd --name-suffix @rerun \
    --out examples/benchmarks/results/rerun_hard
done
# CNN tasks, cut to fit the time budget: 800 steps, one run after the other
# (a vmapped convolution is slow on CPU), and KO at its base's chosen
# learning rate tuning only the collision rate (the base's grid size).
CNN_SET=adam,sgdm,ko_soft_adam,ko_hard_adam,ko_soft_sgd
for t in mnist1d_cnn digits_cnn; do
  run --task $t --only $CNN_SET --steps 800 --sequential --ko-lr-from-base
  run --task $t --groups variants --only ko_soft_adam/norm --steps 800 \
    --sequential --ko-lr-from-base --out examples/benchmarks/results/variants2
done
# Baselines at the MNIST-1D paper's setup (issue 10, part 3): its residual MLP
# and CNN with PyTorch's kernel init, batch 100, 6000 steps, constant rate;
# Adam, SGD-momentum and KO (Adam's grid at one collision rate: the main
# study's chosen rate, or 0.1 for soft 'norm'); 10 seeds;
# the chosen point is retrained on all 4000 training examples (--refit) for
# the test numbers. About 25 + 32 min on the shared 2-core CPU.
run --task mnist1d_mlp_paper --groups paper --seeds 10 --refit
run --task mnist1d_cnn_paper --groups paper --seeds 10 --refit --sequential
