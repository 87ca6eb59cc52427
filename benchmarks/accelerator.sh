#!/usr/bin/env bash
# The accelerator measurements in one run, on the first local GPU/TPU, each one JSON line to
# stdout and to ${OUT:-.}/accelerator.jsonl (stderr of each command in accelerator.jsonl.err).
#
#   benchmarks/accelerator.sh [--size=paper|tiny] [--parts=PART,...] [--task_sets=pose2d,all]
#                             [--autotune_s=600] [--levers=none,batch_256,...] [--time_s=T]
#
# --size=paper (default): the paper's network, 2 stacks x 256 features @ 256 px, bfloat16.
# --size=tiny: 1 stack x 16 features @ 64 px, float32, few steps: checks the script on a CPU.
# --task_sets: which configs of the trainer, profile, torch and step parts run: pose2d (the
# trainer and profile parts at its larger batch, torch and step at both) and all (the four
# tasks); default both.
# After each command a line {"benchmark": "accelerator_command", ...} gives its wall time and
# exit status, for planning device time. --time_s=T: the whole run stops within T
# seconds, but for the shell's own steps between commands (making folders, copying a trace):
# every command, the wheels' install and the checks below included, gets at most the time left
# less a margin for its own exit (a command stopped that way writes what it measured:
# trainer_speed.py its intervals so far); a part's command with less than a minute left is
# skipped (a line says so), and an install or check with no time left is not run (it fails).
# Give it below the device call's own limit, so that the script, not the call, stops last.
# First: the input pipeline's packages must import (exit 3 with a message when they do not:
# .whl/ below), then benchmarks/host_check.py writes one line
# {"benchmark": "host", ...} (Python, JAX and its backend and devices, PyTorch and whether it
# sees CUDA, Triton, the C compiler, the GPU driver) and, at --size=paper, ends the run (exit 4)
# when JAX's backend is the CPU: its CUDA plugin did not load, and the paper's step there would
# take the call's whole time.
# Parts, run in this order, the figures that matter most first (default:
# trainer,profile,loader,torch; a command stopped by its time limit keeps the lines written):
#   trainer  demo data built on this host (benchmarks/trainer_speed.py), then for pose2d at
#            batch 128 and all four tasks at batch 64 the bare step (benchmarks/train_step.py
#            --feed=trainer: the trainer's own program, the crop inside, fed one batch; img/s,
#            MFU, compile time; 100 timed steps at the paper's size) and `hgmt.main`, the
#            loader's workers on the host's cores (config.worker_count=-1), no evaluation:
#            img/s against the bare step's, data wait; both share one persistent compilation
#            cache in the work folder, so the trainer loads the step the bare step compiled
#            (the demo data: 32 clips of 30 frames per split, 960 training frames: grain's
#            shuffle costs more per example the smaller the split; docs/performance.md,
#            "Input pipeline, CPU");
#            a failed bare step writes an error line and the trainer runs all the same
#   profile  where the step's time goes by op kind (benchmarks/profile_step.py): the trainer's
#            own program (--feed=trainer, on the demo data, built here unless there; the
#            random cropped batch should the build fail), pose2d at batch 128, all four at
#            batch 64, compiled without the cache, with XLA:GPU's command buffers off (the
#            kernels of a CUDA graph carry no op name in the trace); each trace is copied to
#            ${OUT:-.}/trace_<tasks>.json.gz and the program's HLO text (the kernels' source
#            lines in its metadata) to ${OUT:-.}/hlo_<tasks>.txt.gz
#   loader   the input pipeline alone on the same demo data (benchmarks/input_pipeline.py),
#            all four tasks at the part's image size and batch 128, the loader's workers on
#            the host's cores: first the decoding alone (augment_on=device) with the device
#            crop's time in the step on this accelerator, then examples/s with the crop on the
#            host
#   torch    the PyTorch reference eager and compiled (benchmarks/torch_reference.py) for
#            pose2d at batch 64 and 128 and all four at batch 64: compiled in max-autotune
#            until one config's compilation takes over --autotune_s seconds or fails (a
#            torch_compile_fallback line says which), then in the default mode
#   step     not by default: the bare step alone on a random cropped batch (train_step.py's
#            default feed, the batch the PyTorch reference trains on), pose2d at batch 64 and
#            128, all four at 64, compiled without the cache. With torch, the two run config
#            by config (the step first), and after each config a line
#            {"benchmark": "hgmt_over_torch", ...} (benchmarks/compare.py --from_lines) gives
#            hgmt's img/s over the reference's, eager and compiled: the goal's ratio
#   tests    not by default: the suite's tests of the device's results against the host's,
#            on this accelerator (benchmarks/device_tests.py: the device augmentation's
#            labels against the host path's); pytest's report in accelerator.jsonl.err
#   streams  not by default: one compiled stream per task against one vmapped stream over the
#            tasks (below)
#   levers   not by default: the bare step of pose2d at batch 128 with each of
#            benchmarks/step_levers.py's changes (XLA:GPU flags, batch 256, Flax's ops) against
#            none
#   pool     not by default: every max-pooling of pose2d at batch 128, forward and
#            backward, in the three ways of benchmarks/pool_backward.py
# Python packages missing on the host travel as wheels in .whl/ (benchmarks/accelerator_wheels.sh
# fills it; see docs/performance.md) and are installed first into /tmp/site. .whl/ is
# git-ignored: a device run copies it only when its carry names it (carry=[".whl"]).
# Exit status: 0; 1 the wheels' install failed or ran out of --time_s; 2 a bad argument; 3 the
# input pipeline's packages do not import (or not within --time_s); 4 no accelerator at
# --size=paper (host_check.py).
set -uo pipefail
cd "$(dirname "$0")/.."
size=paper
parts=trainer,profile,loader,torch
task_sets=pose2d,all
autotune_limit=600
levers=
time_s=
usage="usage: $0 [--size=paper|tiny] [--parts=trainer,profile,loader,torch,step,tests,streams,levers,pool] [--task_sets=pose2d,all] [--autotune_s=600] [--levers=none,...] [--time_s=T]"
for arg in "$@"; do
  case "$arg" in
    --size=*) size=${arg#--size=} ;;
    --parts=*) parts=${arg#--parts=} ;;
    --task_sets=*) task_sets=${arg#--task_sets=} ;;
    --autotune_s=*) autotune_limit=${arg#--autotune_s=} ;;
    --levers=*) levers=${arg#--levers=} ;;
    --time_s=*) time_s=${arg#--time_s=} ;;
    -h|--help) sed -n '2,/^set /{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;  # the header above
    *) echo "unknown argument $arg; $usage" >&2; exit 2 ;;
  esac
done
case "$size" in
  paper) model=(--config.image_size=256 --config.model.num_stacks=2 --config.model.features=256
                --config.model.dtype=bfloat16)
         b1=128; b4=64; b1_small=64; train_steps=300; log_every=50; clips=32; frames=30
         step_steps=20; bare_steps=100; limit=900; loader_batches=200 ;;
  tiny)  model=(--config.image_size=64 --config.model.num_stacks=1 --config.model.features=16
                --config.model.depth=2 --config.model.dtype=float32)
         b1=8; b4=4; b1_small=4; train_steps=6; log_every=2; clips=2; frames=6
         step_steps=2; bare_steps=2; limit=3600; loader_batches=10 ;;  # a shared 2-core machine can be slow
  *) echo "--size=$size: give paper or tiny" >&2; exit 2 ;;
esac
[[ $autotune_limit =~ ^[1-9][0-9]*$ ]] || { echo "--autotune_s=$autotune_limit: give seconds; $usage" >&2; exit 2; }
[[ -z $time_s || $time_s =~ ^[1-9][0-9]*$ ]] || { echo "--time_s=$time_s: give seconds; $usage" >&2; exit 2; }
[ -n "${parts//,/}" ] || { echo "--parts is empty; give one or more parts; $usage" >&2; exit 2; }
for part in ${parts//,/ }; do
  case "$part" in
    trainer|profile|loader|torch|step|tests|streams|levers|pool) ;;
    *) echo "--parts: unknown part $part; $usage" >&2; exit 2 ;;
  esac
done
for ts in ${task_sets//,/ }; do
  case "$ts" in
    pose2d|all) ;;
    *) echo "--task_sets: unknown task set $ts (give pose2d, all or both); $usage" >&2; exit 2 ;;
  esac
done
if [ -n "$levers" ] && [[ ,$parts, != *,levers,* ]]; then
  echo "--levers=$levers: the levers part is not in --parts=$parts; add levers to --parts, or leave --levers out; $usage" >&2
  exit 2
fi
for lever in ${levers//,/ }; do  # the names of step_levers.py's LEVERS
  [[ $lever =~ ^[a-z0-9_]+$ ]] && grep -q "^    \"$lever\": " benchmarks/step_levers.py || {
    echo "--levers: unknown lever $lever (benchmarks/step_levers.py --help lists them); $usage" >&2
    exit 2; }
done
grace=30  # from a command's SIGTERM to its SIGKILL: a trainer saves, the benchmark writes
# left_s: with --time_s, the seconds a command started now may run so that it has stopped,
# its exit's grace included, within the run's T
left_s() { echo $((time_s - SECONDS - grace)); }
# bounded LIMIT CMD...: CMD under `timeout`, for LIMIT seconds (0: no limit of its own) or,
# with --time_s, what is left if that is less; not run (status 124) when nothing is left
bounded() {
  local limit=$1 left
  if [ -n "$time_s" ]; then
    left=$(left_s)
    [ "$left" -lt 1 ] && return 124
    { [ "$limit" -eq 0 ] || [ "$left" -lt "$limit" ]; } && limit=$left
  fi
  timeout --kill-after=$grace "$limit" "${@:2}"
}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  bounded 0 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl
  rc=$?
  if [ $rc -ne 0 ]; then
    echo "accelerator.sh: installing .whl/ failed (exit $rc; 124 or 137: out of --time_s=$time_s)" >&2
    exit 1
  fi
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
# what every part needs beyond the image's packages (.whl/'s: accelerator_wheels.sh)
packages="ml_collections, grain, array_record, tensorflow_datasets, av"
why=$(bounded 0 python3 -c "import $packages" 2>&1)
rc=$?
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
  echo "accelerator.sh: import $packages did not finish within --time_s=$time_s" >&2
  exit 3
elif [ $rc -ne 0 ]; then
  echo "accelerator.sh: import $packages failed (${why##*$'\n'}); carry .whl/ to this host (the device run's carry=[\".whl\"]) and fill it with benchmarks/accelerator_wheels.sh where PyPI can be reached" >&2
  exit 3
fi
log=${OUT:-.}/accelerator.jsonl
work=${ACCELERATOR_WORK:-/tmp/hgmt_accelerator}
mkdir -p "${OUT:-.}" "$work" || { echo "accelerator.sh: cannot make OUT=${OUT:-.} or ACCELERATOR_WORK=$work" >&2; exit 1; }
# the host's line; at the paper's size no run on JAX's CPU backend (exit 4)
host_flag=; [ "$size" = paper ] && host_flag=--require_accelerator
bounded 120 python3 benchmarks/host_check.py $host_flag | grep '^{' | tee -a "$log"
host_rc=${PIPESTATUS[0]}
case $host_rc in
  0) ;;
  4) exit 4 ;;  # host_check.py said why on stderr
  *) echo "accelerator.sh: benchmarks/host_check.py failed (exit $host_rc); going on" >&2 ;;
esac
# run LIMIT_S CMD...: CMD's JSON lines to stdout and the log (and to the file $also, when set);
# CMD's exit status (124 or 137: stopped at its limit, LIMIT_S or what --time_s leaves), not
# that of the filter (grep fails when CMD printed no line)
run() {
  local t0=$SECONDS rc what=${3##*/} a limit=$1
  run_limit=0  # the limit the command gets (0: skipped), for its caller
  [ "$what" = -c ] && what="python3 -c ${4%%;*}"  # e.g. the loader part's demo build
  for a in "${@:4}"; do
    case "$a" in
      --config=*tasks=*) what+=" tasks=${a##*tasks=}" ;;
      --config.batch_size=*|--compile|--compile_mode=*|--placements=*|--feed=*) what+=" ${a#--}" ;;
    esac
  done
  if [ -n "$time_s" ]; then
    local left
    left=$(left_s)
    if [ $left -lt 60 ]; then
      echo "{\"benchmark\": \"accelerator_command\", \"command\": \"$what\", \"skipped\": \"under a minute left of --time_s=$time_s\"}" | tee -a "$log"
      return 124
    fi
    [ $left -lt "$limit" ] && limit=$left
  fi
  run_limit=$limit
  timeout --kill-after=$grace "$limit" "${@:2}" 2>>"$log.err" | grep --line-buffered '^{' |
    tee -a "$log" ${also:+"$also"}
  rc=${PIPESTATUS[0]}
  echo "{\"benchmark\": \"accelerator_command\", \"command\": \"$what\", \"wall_s\": $((SECONDS - t0)), \"exit\": $rc}" | tee -a "$log"
  return "$rc"
}
has() { [[ ",$parts," == *",$1,"* ]]; }
# the trainer and profile parts' configs: "tasks batch" for each of --task_sets
specs=()
[[ ",$task_sets," == *",pose2d,"* ]] && specs+=("pose2d $b1")
[[ ",$task_sets," == *",all,"* ]] && specs+=("all $b4")
cache=$work/jax_cache

if has trainer; then
  for spec in "${specs[@]}"; do
    set -- $spec
    cfg=(--config=configs/default.py:tasks=$1 "${model[@]}" --config.batch_size=$2
         --config.total_steps=$train_steps --config.log_every=$log_every
         --config.worker_count=-1 --config.evals.test.at_end=false)
    rm -rf "$work/run_$1_$2"  # a fresh run: an earlier one's checkpoint would be resumed
    run "$limit" python3 benchmarks/trainer_speed.py "${cfg[@]}" --demo_data="$work/demo" \
      --demo_clips=$clips --demo_frames=$frames --compilation_cache="$cache" \
      --workdir="$work/run_$1_$2" --bare_steps=$bare_steps
  done
fi
# torch_config TASKS BATCH PAIR ARGS...: the PyTorch reference of one config (its ARGS), eager,
# then compiled in $mode (max-autotune until one config's compilation fails or runs out of
# --autotune_s: then, for it and the configs after it, the default mode); its lines also go to
# the file PAIR
torch_config() {
  local tasks=$1 batch=$2 pair=$3 rc why
  shift 3
  also=$pair run "$limit" python3 benchmarks/torch_reference.py "$@"
  if [ $mode = max-autotune ]; then
    also=$pair run "$autotune_limit" python3 benchmarks/torch_reference.py "$@" --compile \
      --compile_mode=max-autotune
    rc=$?
    if [ $rc -ne 0 ]; then  # stopped at a limit (124, 137) or failed (stderr in the .err log)
      # limit: --autotune_s ran out; time_s: --time_s left it less, or nothing
      why=failed
      if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        why=limit; [ "$run_limit" -lt "$autotune_limit" ] && why=time_s
      fi
      echo "{\"benchmark\": \"torch_compile_fallback\", \"tasks\": \"$tasks\", \"batch\": $batch, \"tried\": \"max-autotune\", \"why\": \"$why\", \"exit\": $rc, \"limit_s\": $run_limit}" | tee -a "$log"
      mode=default
    fi
  fi
  if [ $mode = default ]; then
    also=$pair run "$limit" python3 benchmarks/torch_reference.py "$@" --compile \
      --compile_mode=default
  fi
}
# demo_data: the demo data in $work/demo, built unless there already (its command's status)
demo_data() {
  run "$limit" python3 -c "from hgmt import cores; from hgmt.data import demo; demo.build('$work/demo/surreal', '$work/demo/tfds', $clips, $frames, workers=cores.usable_cores())"
}
if has profile; then
  feed=(--feed=cropped)  # should the demo data fail to build
  demo_data && feed=(--feed=trainer --config.dataset=surreal/all
                     --config.data_dir="$work/demo/tfds")
  for spec in "${specs[@]}"; do
    set -- $spec
    XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_command_buffer=" \
      run "$limit" python3 benchmarks/profile_step.py --config=configs/default.py:tasks=$1 \
      "${model[@]}" --config.batch_size=$2 --config.total_steps=$train_steps "${feed[@]}" \
      --steps=5 --warmup=2 --trace_dir="$work/trace_$1"
    trace=$(find "$work/trace_$1" -name perfetto_trace.json.gz | sort | tail -n 1)
    [ -n "$trace" ] && cp "$trace" "${OUT:-.}/trace_$1.json.gz"
    [ -f "$work/trace_$1/step_hlo.txt.gz" ] && cp "$work/trace_$1/step_hlo.txt.gz" "${OUT:-.}/hlo_$1.txt.gz"
  done
fi
if has loader && demo_data; then  # the device placement first: this host's own figure
  run "$limit" python3 benchmarks/input_pipeline.py --config=configs/default.py:tasks=all \
    "${model[@]}" --config.batch_size=128 --config.dataset=surreal/all \
    --config.data_dir="$work/demo/tfds" --config.worker_count=-1 --batches=$loader_batches \
    --placements=device,host
fi
# torch and step, config by config: hgmt's step on a random cropped batch (train_step.py's
# default feed), then the PyTorch reference, then (both there) their ratio's line
if has torch || has step; then
  mode=max-autotune  # until one config's max-autotune compile runs out of time: then default
  for spec in "pose2d $b1_small" "pose2d $b1" "all $b4"; do
    set -- $spec
    [[ ",$task_sets," == *",$1,"* ]] || continue
    cfg=(--config=configs/default.py:tasks=$1 "${model[@]}" --config.batch_size=$2)
    pair=$work/pair_$1_$2.jsonl  # this config's lines, for the ratio
    rm -f "$pair"
    has step && also=$pair run "$limit" python3 benchmarks/train_step.py "${cfg[@]}" \
      --steps=$step_steps --warmup=3
    has torch && torch_config "$1" "$2" "$pair" "${cfg[@]}" --steps=$step_steps --warmup=5
    if has step && has torch && [ -s "$pair" ]; then
      bounded 0 python3 benchmarks/compare.py --from_lines="$pair" 2>>"$log.err" | grep '^{' |
        tee -a "$log"
    fi
  done
fi

# --- The device's results against the host's: --parts=tests.
# The suite's tests that compare them (benchmarks/device_tests.py's default), on JAX's default
# backend: one line with the passed and failed tests.
if has tests; then
  run 600 python3 benchmarks/device_tests.py
fi

# --- Stream modes (config.model.stream_mode): --parts=streams.
# One compiled stream per task against one vmapped stream over the tasks: compile and step
# time for pose2d and all four at batch $b4, each in a fresh process, the modes alternating
# (benchmarks/stream_modes.py; its last line has the ratios); its duration on a GPU is
# unmeasured (the command's limit: 900 s).
if has streams; then
  run 900 python3 benchmarks/stream_modes.py --task_sets=pose2d,all --rounds=1 -- \
    "${model[@]}" --config.batch_size=$b4 --steps=$step_steps --warmup=3
fi

# --- Levers on the step's speed: --parts=levers.
# The bare step of pose2d at batch $b1 as configured, then with each change of
# benchmarks/step_levers.py (batch 256, matmuls by cuBLAS or cuDNN, CUDA graphs of short kernel
# runs, exhaustive Triton tiling, no CUDA graphs, Flax's own ops), each in a fresh process, no
# compilation cache; its last line has each lever's img/s, MFU and compile time over the first's.
# --levers=LIST measures only those, in that order (step_levers.py's names; give none first):
# each lever is a fresh process that compiles the step without a cache, so the eight do not
# fit in one 10-minute device command (the device time of two: docs/performance.md, "On a GPU").
if has levers; then
  run 900 python3 benchmarks/step_levers.py ${levers:+--levers=$levers} --timeout_s=240 -- \
    --config=configs/default.py:tasks=pose2d "${model[@]}" --config.batch_size=$b1 \
    --steps=$step_steps --warmup=3
fi

# --- The max-pooling's backward: --parts=pool.
# All the pools of pose2d at batch $b1, forward and backward, one program per way: hgmt's
# max_pool2 (the first maximum's mask stacked back per window place), from each window's
# first-maximum index (no stacking), and nn.max_pool's select-and-scatter; the ways alternate
# (benchmarks/pool_backward.py; its last line has each way's median over max_pool2's and
# whether its values equal max_pool2's on this backend: a way that differs is timed all the same).
if has pool; then
  run 300 python3 benchmarks/pool_backward.py --config=configs/default.py:tasks=pose2d \
    "${model[@]}" --config.batch_size=$b1 --steps=$step_steps --warmup=3 --rounds=3
fi
exit 0
