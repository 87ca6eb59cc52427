#!/usr/bin/env bash
# Cloud TPU VM pod slice: install hgmt on every worker, then train on all of them at once
# (one process per worker; jax.distributed.initialize() finds the slice's topology itself).
#
#   TPU=my-v4-32 ZONE=us-central2-b launch/tpu_vm.sh setup [GIT_URL]
#   TPU=my-v4-32 ZONE=us-central2-b launch/tpu_vm.sh train gs://bucket/runs/all \
#       configs/default.py:tasks=all --config.data_dir=gs://bucket/tfds --config.batch_size=512
#
# Workdir and data_dir should be gs:// paths every worker reads (docs/training.md).
# `train` again resumes from the last checkpoint.
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE to its zone}"
ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="$1"
}
cmd=${1:?usage: launch/tpu_vm.sh setup [GIT_URL] | train WORKDIR [CONFIG[:ARG]] [flags...]}
shift
case "$cmd" in
  setup)
    url=${1:-$(git -C "$(dirname "$0")/.." remote get-url origin)}
    ssh_all "set -e; [ -d hgmt ] || git clone $(printf %q "$url") hgmt; cd hgmt && \
git pull --ff-only && \
python3 -m pip install -q -e . 'jax[tpu]' \
  -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
    ;;
  train)
    workdir=${1:?usage: launch/tpu_vm.sh train WORKDIR [CONFIG[:ARG]] [flags...]}
    shift
    config=configs/default.py:tasks=all
    if [[ $# -ge 1 && $1 != --* ]]; then
      config=$1
      shift
    fi
    extra=""
    if [[ $# -gt 0 ]]; then
      printf -v extra ' %q' "$@"
    fi
    # The trainers run in the ssh sessions: keep this command's terminal open (e.g. run it in
    # tmux); ending it ends the sessions, which may leave trainers holding the TPU.
    ssh_all "cd hgmt && python3 -m hgmt.main --distributed --config=$(printf %q "$config") \
--workdir=$(printf %q "$workdir")${extra}"
    ;;
  *)
    echo "unknown command '$cmd': use setup or train" >&2
    exit 2
    ;;
esac
