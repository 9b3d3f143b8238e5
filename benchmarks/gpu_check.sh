#!/usr/bin/env bash
# The one GPU check (about 8 minutes on an H200, within --budget; benchmarks/gpu_check.py lists
# its steps): the CUDA + AMP paths and their figures, ending with one JSON line.
#
#   bash benchmarks/gpu_check.sh                      # on a machine with a CUDA GPU
#   bash benchmarks/gpu_check.sh --device cpu --size 64 --steps 2 --images 8   # a dry run
#
# Python: PY (default: .venv/bin/python if present, else python3). A machine without the
# project's packages and no network: build wheels here with
#   pip download -d .gpu-wheels --only-binary=:all: -e ".[dev]"   (then remove torch*, nvidia*)
# carry .gpu-wheels, and this script installs from it first.
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=offline
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}

if [ -d .gpu-wheels ]; then
  "$PY" -m pip install -q --no-index --find-links .gpu-wheels -e ".[dev]"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
exec "$PY" benchmarks/gpu_check.py "$@"
