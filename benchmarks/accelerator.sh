#!/usr/bin/env bash
# The accelerator measurements of README "Performance" in one run: hgmt's train step and the
# PyTorch reference at the paper's size (2 stacks, 256 features, 256 px, bfloat16), one task
# and all four, on the first local GPU/TPU. One JSON line per measurement, to stdout and to
# ${OUT:-.}/accelerator.jsonl. Usage: benchmarks/accelerator.sh [batch] [--jax_only]
set -uo pipefail
cd "$(dirname "$0")"
batch=${1:-64}
jax_only=${2:-}
log=${OUT:-.}/accelerator.jsonl
run() { timeout 300 "$@" 2>&1 | tee -a "$log.err" | grep '^{' | tee -a "$log"; }
size=(--stacks 2 --features 256 --res 256 --dtype bfloat16)
run python3 train_step.py "${size[@]}" --batch "$batch" --tasks pose2d --steps 20 --warmup 3
[ -z "$jax_only" ] && run python3 torch_reference.py "${size[@]}" --batch "$batch" --tasks pose2d --steps 20 --warmup 5
run python3 train_step.py "${size[@]}" --batch $((2 * batch)) --tasks pose2d --steps 10 --warmup 3
run python3 train_step.py "${size[@]}" --batch "$batch" --tasks all --steps 10 --warmup 3
[ -z "$jax_only" ] && run python3 torch_reference.py "${size[@]}" --batch "$batch" --tasks all --steps 10 --warmup 5
exit 0
