#!/bin/bash
# One prepared script for a GPU machine (H100 / H200; jax with CUDA, flax and
# optax installed, nothing else needed): the cost benchmark (ResNet-18 at
# batch 128 is the target model), the collision scaling curve at GPU sizes,
# and a short accuracy run. Results go under $OUT (default ./gpu_out).
#
#   OUT=/some/dir PYTHONPATH=. bash examples/benchmarks/gpu_run.sh
#
# About 7-9 minutes on an H100. mnist1d / scikit-learn are not needed: the
# accuracy run uses MNIST-1D if the package is there, a generated task if not.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH=.:examples:examples/benchmarks:${PYTHONPATH:-}
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # so peak memory means something
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
  > "$OUT/gpu.txt" 2>&1
$PY -c "import jax; print(jax.devices())" >> "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

# 1. Cost: ResNet-18 first (the target), then the other models.
timeout 300 $PY examples/benchmarks/cost_benchmark.py \
  --models resnet18,transformer,mlp512,cnn --repeats 50 --warmup 5 \
  --tag gpu --with-v1 --with-rungs --out "$OUT" 2>&1 | tee "$OUT/cost_gpu.txt"

# 2. Scaling of one leaf with N and D.
timeout 120 $PY examples/benchmarks/collision_scaling.py \
  --ns 256,1024,4096,16384 --ds 256,1024,4096,16384 --fixed-d 1024 \
  --fixed-n 1024 --repeats 30 --tag gpu --out "$OUT" 2>&1 \
  | tee "$OUT/scaling_gpu.txt"

# 3. A short accuracy run (adam against KO-soft and KO-hard, 5 seeds).
TASK=synthetic_mlp
$PY -c "import mnist1d" 2>/dev/null && TASK=mnist1d_mlp
timeout 150 $PY examples/benchmarks/accuracy_study.py --task $TASK \
  --only adam,ko_soft_adam,ko_hard_adam --out "$OUT" 2>&1 \
  | tee "$OUT/accuracy_gpu.txt"
ls -l "$OUT"
