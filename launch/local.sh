#!/usr/bin/env bash
# Train and evaluate on one host with all its accelerators (the batch split over them all).
#
#   launch/local.sh WORKDIR [CONFIG[:ARG]] [--config.field=value ...]
#   launch/local.sh runs/all configs/default.py:tasks=all --config.data_dir=/data/tfds
#   CPU_DEVICES=4 launch/local.sh runs/cpu configs/default.py:tasks=pose2d,runlocal
#
# CPU_DEVICES=N splits the CPU into N virtual devices (no accelerator needed). Rerunning the
# same command resumes from WORKDIR's last checkpoint. Paths are the caller's, as given.
set -euo pipefail
if [[ $# -lt 1 || $1 == -* ]]; then  # no WORKDIR first (e.g. --help): the usage
  sed -n '2,9p' "$0" >&2
  [[ $# -ge 1 && ($1 == -h || $1 == --help) ]] && exit 0
  exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
workdir=$1
shift
config=$repo/configs/default.py:tasks=all
if [[ $# -ge 1 && $1 != --* ]]; then
  config=$1
  shift
fi
if [[ -n "${CPU_DEVICES:-}" ]]; then
  if [[ ! $CPU_DEVICES =~ ^[1-9][0-9]*$ ]]; then
    # XLA would print its hundreds of flags, or JAX a traceback, instead. A leading zero is
    # refused too: bash reads 010 as octal 8 and 08 as an error.
    echo "error: CPU_DEVICES=$CPU_DEVICES: give the number of virtual CPU devices, 1 or more" \
      "(e.g. CPU_DEVICES=4), or leave it unset to train on the host's accelerators" >&2
    exit 2
  fi
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${CPU_DEVICES}"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec python3 -m hgmt.main --config="$config" --workdir="$workdir" "$@"
