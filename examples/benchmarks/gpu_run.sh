#!/bin/bash
# One prepared script for a GPU machine (H100 / H200; jax with CUDA, flax and
# optax installed, nothing else needed): the cost benchmark (ResNet-18 at
# batch 128 is the target model), the collision scaling curve at GPU sizes,
# a short accuracy run, the compile time of KO on real model trees, and the
# language-model study (issue 10) at its CPU size (all arms, 5 seeds, the
# learning-rate grid) and at its GPU size (fewer seeds and rates).
# Results go under $OUT (default ./gpu_out).
#
#   OUT=/some/dir PYTHONPATH=. bash examples/benchmarks/gpu_run.sh
#
# About 7-9 minutes on an H100 for parts 1-3, 2.5 more for part 4
# (compile times; up to 5 with the per-leaf checkout beside it); PARTS=compile (or any comma list of cost, scaling,
# accuracy, compile, lm, lm_gpu) runs only those parts; lm and lm_gpu are
# not in the default list (about 5 and 6 minutes on an H200).
# LM_SIZE=quick LM_GPU_SIZE=quick SIZE=tiny make a dry run on any machine. mnist1d / scikit-learn are not
# needed: the accuracy run uses MNIST-1D if the package is there, a generated
# task if not.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH=.:${PYTHONPATH:-}
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # so peak memory means something
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
  > "$OUT/gpu.txt" 2>&1
$PY -c "import jax; print(jax.devices())" >> "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
PARTS=${PARTS:-cost,scaling,accuracy,compile}

# 1. Cost: ResNet-18 first (the target), then the other models.
part_cost() {
timeout 300 $PY examples/benchmarks/cost/cost_benchmark.py \
  --models resnet18,transformer,mlp512,cnn --repeats 50 --warmup 5 \
  --tag gpu --out "$OUT" 2>&1 | tee "$OUT/cost_gpu.txt"
}

# 2. Scaling of one leaf with N and D.
part_scaling() {
timeout 120 $PY examples/benchmarks/scaling/collision_scaling.py \
  --ns 256,1024,4096,16384 --ds 256,1024,4096,16384 --fixed-d 1024 \
  --fixed-n 1024 --repeats 30 --tag gpu --out "$OUT" 2>&1 \
  | tee "$OUT/scaling_gpu.txt"
}

# 3. A short accuracy run (adam against KO-soft and KO-hard, 5 seeds).
part_accuracy() {
TASK=synthetic_mlp
$PY -c "import mnist1d" 2>/dev/null && TASK=mnist1d_mlp
timeout 150 $PY examples/benchmarks/accuracy/accuracy_study.py --task $TASK \
  --only adam,ko_soft_adam,ko_hard_adam --out "$OUT" 2>&1 \
  | tee "$OUT/accuracy_gpu.txt"
}

# 4. Compile time on real model trees (issue 9): ResNet-18 (width 64, batch
# 128) and the 12-block GPT, list of blocks and scanned, with the current
# ko_optax and, beside it, the per-leaf one (the commit "Public optax API
# only", extracted with git archive) when git and that commit are there or
# BEFORE=/path/to/checkout is given (BEFORE=/none: the current one only).
# Each (row, checkout) is capped at $COMPILE_ROW_TIMEOUT s, all three
# optimizers together: on an H200 the GPT row takes about 50 s (Adam and
# KO-soft compile in 11-14 s each), so a cap under 90 s cuts KO-hard off and
# reads as a slow compile. About 2.5 minutes on an H200 for the current
# checkout alone; COMPILE_ROWS=gpt48,gpt48_scan adds the 48-block GPT (the
# depth ratio on a GPU; not run yet, budget about 3 minutes more and
# COMPILE_ROW_TIMEOUT=200); COMPILE_ROUNDS=3 compiles every optimizer three
# times (medians, ratios round by round; triple the time); the run ends with
# the issue's targets and a verdict each; SIZE=tiny is a dry run on any
# machine.
part_compile() {
BEFORE=${BEFORE:-}
if [ -z "$BEFORE" ] && git rev-parse --git-dir >/dev/null 2>&1; then
  C=$(git log --format=%h -1 --grep='^Public optax API only' 2>/dev/null)
  if [ -n "$C" ]; then
    BEFORE=${TMPDIR:-/tmp}/ko_before_$C
    mkdir -p "$BEFORE" && git archive "$C" ko_optax | tar -x -C "$BEFORE"
  fi
fi
TREES="after=."
[ -n "$BEFORE" ] && [ -d "$BEFORE/ko_optax" ] && TREES="before=$BEFORE,after=."
timeout ${COMPILE_TIMEOUT:-300} $PY examples/benchmarks/cost/compile_benchmark.py \
  --size ${SIZE:-gpu} --rows ${COMPILE_ROWS:-resnet18,gpt12,gpt12_scan} --trees "$TREES" \
  --timeout ${COMPILE_ROW_TIMEOUT:-120} --repeats 20 --tag gpu --out "$OUT" \
  --compile-rounds ${COMPILE_ROUNDS:-1} \
  --work-dir "$OUT/compile_rows" 2>&1 | tee "$OUT/compile_gpu.txt"
}

# 5. The language-model study at its CPU size, run where it is fast: every
# arm, 5 seeds, the learning-rate grid (examples/benchmarks/lm/lm_study.py).
# LM_ARMS / LM_LRS pick arms and rates, e.g. the arm the first H200 run
# missed: LM_ARMS=muon LM_TAG=h200_muon PARTS=lm (about 60 s per 20 runs on
# an H200), or KO on top of Muon: LM_ARMS=ko_hard_muon LM_TAG=h200_ko_muon;
# then merge with the records in results/lm (lm_study.py --merge),
# after checking that the corpus is the same (Python 3.12: 198 train files,
# 3118546 bytes).
part_lm() {
timeout ${LM_TIMEOUT:-300} $PY examples/benchmarks/lm/lm_study.py \
  --size ${LM_SIZE:-cpu} --seeds 5 --tag ${LM_TAG:-cpu_size_on_gpu} \
  ${LM_ARMS:+--arms $LM_ARMS} ${LM_LRS:+--lrs $LM_LRS} \
  --step-repeats 0 --max-minutes ${LM_MINUTES:-4} --out "$OUT" 2>&1 | tee "$OUT/lm_cpu_size.txt"
}

# 6. The study at its GPU size (12 blocks x 512), short: 2 seeds at one
# learning rate (not tuned), four arms, step times. Each arm takes about a
# minute or more on an H200 (compile, 600 steps of 2 vmapped runs, the
# evaluations): give this part a call of its own, about 6 minutes (in
# 2026-11-28's session 100 s finished no arm).
part_lm_gpu() {
timeout ${LM_GPU_TIMEOUT:-400} $PY examples/benchmarks/lm/lm_study.py \
  --size ${LM_GPU_SIZE:-gpu} --seeds 2 --lrs ${LM_GPU_LRS:-1e-3} \
  --arms ${LM_GPU_ARMS:-adamw,ko_gpt,ko_soft_norm,ko_hard} --step-repeats 10 --tag ${LM_GPU_TAG:-gpu_size} \
  --max-minutes ${LM_GPU_MINUTES:-5} --out "$OUT" 2>&1 \
  | tee "$OUT/lm_gpu_size.txt"
}
# The parts run in the order PARTS names them.
for part in ${PARTS//,/ }; do
  case $part in
    cost|scaling|accuracy|compile|lm|lm_gpu) "part_$part" ;;
    *) echo "unknown part $part (cost, scaling, accuracy, compile, lm, lm_gpu)";;
  esac
done
ls -l "$OUT"
