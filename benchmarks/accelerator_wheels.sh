#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with the wheels of the Python packages that hgmt's training,
# evaluation and demo data need and that this workplace's accelerator image lacks (Python 3.12
# with JAX, Flax, optax, orbax, TensorBoard, OpenCV, SciPy, Pillow and PyTorch; no TensorFlow,
# which hgmt does not need to train): the configs (ml_collections), the input pipeline (grain,
# array_record, tensorflow-datasets and what it imports), the demo clips (av), and pytest
# with the plugin the suite's options name (accelerator.sh --parts=tests). Run on a host
# that reaches PyPI; benchmarks/accelerator.sh installs them on the accelerator host and then
# checks that ml_collections, grain, array_record, tensorflow_datasets and av import (exit 3
# when not). .whl/ is git-ignored: a device run copies it only when its carry names it
# (carry=[".whl"]).
#   benchmarks/accelerator_wheels.sh [python version, default 3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-3.12}
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" \
  --implementation cp "${platforms[@]}" -d .whl \
  ml_collections==1.1.0 grain==0.2.18 array_record==0.8.6 tensorflow-datasets==4.9.10 \
  tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0 av==18.1.0 dm-tree==0.1.10 \
  immutabledict==4.3.1 toml==0.10.2 termcolor==3.3.0 importlib_resources==7.1.0 \
  portpicker==1.6.0 pytest==9.0.3 pluggy==1.6.0 iniconfig==2.3.0 pytest-xdist==3.8.0 \
  execnet==2.1.2 pygments==2.20.0 packaging==26.2
python3 -m pip wheel -q --no-deps -w .whl promise==2.3  # an sdist only; pure Python
du -sh .whl
