#!/usr/bin/env bash
# Cloud TPU VM pod slice: install hgmt on every worker, then train on all of them at once
# (one process per worker; jax.distributed.initialize() finds the slice's topology itself).
#
#   TPU=my-v4-32 ZONE=us-central2-b launch/tpu_vm.sh setup [GIT_URL]
#   TPU=my-v4-32 ZONE=us-central2-b launch/tpu_vm.sh train gs://bucket/runs/all \
#       configs/default.py:tasks=all --config.data_dir=gs://bucket/tfds --config.batch_size=512
#   TPU=my-v4-32 ZONE=us-central2-b launch/tpu_vm.sh stop
#
# setup clones GIT_URL (default: this checkout's origin, an ssh address taken over https, as
# the workers hold no key for it) into ~/hgmt on every worker and checks out this checkout's
# commit (push it first), then installs hgmt with JAX's TPU runtime into ~/hgmt-venv, a
# virtual environment of Python >= 3.11 (JAX's minimum; TPU VM images of Ubuntu 22.04 have
# 3.10), made by uv, which fetches such a Python where the image lacks one.
# Workdir and data_dir should be gs:// paths every worker reads (docs/training.md).
# `train` again resumes from the last checkpoint. `stop` sends SIGTERM to the trainers of
# every worker (e.g. left running by a dropped ssh session): they save a checkpoint at one
# step and exit.
set -euo pipefail
usage='usage: launch/tpu_vm.sh setup [GIT_URL] | train WORKDIR [CONFIG[:ARG]] [flags...] | stop'
if [[ ${1:-} == -h || ${1:-} == --help || ${1:-} == help ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
fi
[[ $# -ge 1 ]] || { echo "$usage" >&2; exit 2; }
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE to its zone}"
ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="$1"
}
repo=$(cd "$(dirname "$0")/.." && pwd)
python='~/hgmt-venv/bin/python'
cmd=$1
shift
case "$cmd" in
  setup)
    url=${1:-$(git -C "$repo" remote get-url origin)}
    if [[ $url =~ ^git@([^:/]+):(.+)$ || $url =~ ^ssh://git@([^/:]+)(:[0-9]+)?/(.+)$ ]]; then
      url="https://${BASH_REMATCH[1]}/${BASH_REMATCH[${#BASH_REMATCH[@]}-1]}"  # bash 3.2 too
    fi
    commit=$(git -C "$repo" rev-parse HEAD)
    if [[ -n $(git -C "$repo" status --porcelain) ]]; then
      echo "warning: this checkout has uncommitted changes or new files, which setup does not" \
        "install on the workers (they check out commit $commit); commit and push them, then" \
        "run setup again" >&2
    fi
    ssh_all "set -e; [ -d hgmt ] || git clone -q $(printf %q "$url") hgmt; cd hgmt && \
git fetch -q origin && { git checkout -q --detach $commit || { echo \"error: commit $commit \
is not at $(printf %q "$url"); push it, then run setup again\" >&2; exit 1; }; } && \
{ command -v uv >/dev/null || [ -x ~/.local/bin/uv ] || \
curl -LsSf https://astral.sh/uv/install.sh | sh -s -- -q; } && \
PATH=~/.local/bin:\$PATH && uv venv -q --allow-existing --python '>=3.11' ~/hgmt-venv && \
uv pip install -q --python $python -e . 'jax[tpu]'"
    ;;
  train)
    workdir=${1:?usage: launch/tpu_vm.sh train WORKDIR [CONFIG[:ARG]] [flags...]}
    shift
    if [[ $workdir == -* ]]; then
      echo "error: train $workdir: give WORKDIR first (launch/tpu_vm.sh train WORKDIR" \
        "[CONFIG[:ARG]] [flags...])" >&2
      exit 2
    fi
    if [[ $workdir != gs://* ]]; then
      echo "warning: WORKDIR $workdir is a local path, each worker's own disk; on a slice of" \
        "several workers give a gs:// path they all read and write (docs/training.md)" >&2
    fi
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
    # tmux); a session that drops may leave its trainer running: `stop` ends them with a save.
    # Each worker says when its hgmt is not this checkout's commit (setup not run since);
    # a copy of the script outside a checkout has no commit to compare.
    commit=$(git -C "$repo" rev-parse HEAD 2>/dev/null || true)
    same=""
    if [[ -n $commit ]]; then
      same="{ [ \"\$(git rev-parse HEAD 2>/dev/null)\" = $commit ] || echo \"warning: hgmt \
on \$(hostname) is not at this checkout's commit $commit: run setup again to train it\" >&2; } \
&& "
    fi
    ssh_all "cd hgmt && $same$python -m hgmt.main --distributed \
--config=$(printf %q "$config") --workdir=$(printf %q "$workdir")${extra}"
    ;;
  stop)
    # The trainers' own command lines only (the pattern does not match itself: [-]).
    ssh_all "pkill -TERM -u \"\$USER\" -f '^[^ ]*python[^ ]* [-]m hgmt[.]main --distributed' \
|| true"
    ;;
  *)
    echo "unknown command '$cmd': use setup, train or stop" >&2
    exit 2
    ;;
esac
