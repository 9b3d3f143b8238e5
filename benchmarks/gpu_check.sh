#!/usr/bin/env bash
# One prepared GPU check (about 6 minutes on an H100): the CUDA + AMP paths and their figures.
#
#   bash benchmarks/gpu_check.sh            # on a machine with a CUDA GPU
#   GPU_CHECK_DEVICE=cpu SIZE=64 STEPS=2 IMAGES=8 bash benchmarks/gpu_check.sh   # a dry run here
#
# 1. the tests marked gpu (training + validation at 32-true / 16-mixed / bf16-mixed, fp16
#    prediction against fp32 on the CPU);
# 2. training throughput at 512 px, batch 2: fp32 vs 16-mixed vs bf16-mixed (cxrdet's
#    Lightning loop, and the plain loop at fp32);
# 3. inference throughput at 512 px, batch 8: fp32 vs 16-mixed;
# then a table of the figures, with the card's name. Copy it into benchmarks/README.md.
#
# Python: PY (default: .venv/bin/python if present, else python3). A machine without the
# project's packages and no network: build wheels here with
#   pip download -d .gpu-wheels --only-binary=:all: -e ".[dev]"   (then remove torch*, nvidia*)
# carry .gpu-wheels, and this script installs from it first.
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=offline
DEVICE=${GPU_CHECK_DEVICE:-cuda}
SIZE=${SIZE:-512}
STEPS=${STEPS:-30}
IMAGES=${IMAGES:-64}
OUT=${OUT:-$(mktemp -d)}
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}

if [ -d .gpu-wheels ]; then
  "$PY" -m pip install -q --no-index --find-links .gpu-wheels -e ".[dev]"
fi
"$PY" - <<PYEOF
import torch, sys
if "$DEVICE" == "cuda" and not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible to torch " + torch.__version__)
print("torch", torch.__version__, "|", torch.cuda.get_device_name(0) if "$DEVICE" == "cuda" else "cpu")
PYEOF
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

echo "== 1. tests marked gpu"
timeout 150 "$PY" -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tail -5

echo "== 2. training throughput, ${SIZE} px"
ACCEL=$([ "$DEVICE" = cuda ] && echo gpu || echo cpu)
PRECISIONS=$([ "$DEVICE" = cuda ] && echo 32-true,16-mixed,bf16-mixed || echo 32-true)
timeout 240 "$PY" benchmarks/train_throughput.py --size "$SIZE" --batch 2 --steps "$STEPS" \
  --rounds "${ROUNDS:-2}" --warmup 5 --accelerator "$ACCEL" --precisions "$PRECISIONS" 2>/dev/null | tail -1 > "$OUT/train.json"

echo "== 3. inference throughput, ${SIZE} px"
for p in 32 16-mixed; do
  [ "$DEVICE" = cpu ] && [ "$p" = 16-mixed ] && p=bf16-mixed
  timeout 120 "$PY" benchmarks/predict.py --images "$IMAGES" --size "$SIZE" --batch 8 \
    --device "$DEVICE" --precision "$p" 2>/dev/null | tail -1 > "$OUT/predict-$p.json"
done

"$PY" - "$OUT" <<'PYEOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
train = json.loads((out / "train.json").read_text())
print(f"\n| {train['device']} | images/s | vs fp32 |\n|---|---|---|")
print(f"| train, plain PyTorch loop, fp32 | {train['plain_img_per_s']:.2f} | |")
for k, v in train["cxrdet_img_per_s"].items():
    print(f"| train, cxrdet, {k} | {v:.2f} | {train['speedup'][k]:.2f}x |")
base = None
for f in sorted(out.glob("predict-*.json"), key=lambda p: p.stem != "predict-32"):
    r = json.loads(f.read_text())
    base = base or r["predict_img_per_s"]
    print(f"| predict.py, {r['precision']} (bare loop {r['bare_img_per_s']:.2f}) | "
          f"{r['predict_img_per_s']:.2f} | {r['predict_img_per_s'] / base:.2f}x |")
PYEOF
