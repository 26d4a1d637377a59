#!/usr/bin/env bash
# Issue 7's GPU check, run from the repository root on one H200-class GPU, offline, in well
# under 5 minutes: ViT-B-16 with random weights (throughput does not depend on them), batch 256,
# bf16 autocast, ft / flyp / starft / reference-style starft timed side by side
# (python -m stages.training.bench), then samples/s and MFU of flyp and starft.
#
# Uses .venv when it exists, else a python3 that already has torch and open_clip (the package
# itself is then put on PYTHONPATH); it never downloads anything. Overrides for a CPU smoke run
# of this script (tests/test_bench.py runs one): ARCH, BATCH, DEVICE, PRECISION, CLASSES, STEPS,
# WARMUP, OUT, PEAK_TFLOPS (MFU peak for a device not in the table); COMPILE=1 adds --compile
# (minutes of compilation; not part of the 5-minute budget).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1

ARCH=${ARCH:-ViT-B-16}
BATCH=${BATCH:-256}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-bf16}
CLASSES=${CLASSES:-1000}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-5}
OUT=${OUT:-results/bench/${ARCH}-gpu.json}

if [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    PY=python3
    "$PY" -c "import torch, open_clip, pydantic, yaml" || {
        echo "gpu_bench: no .venv and $PY lacks torch/open_clip/pydantic/yaml; run 'make venv' first" >&2
        exit 1
    }
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ "$DEVICE" != cpu ]; then
    "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" || {
        echo "gpu_bench: torch sees no CUDA device" >&2
        exit 1
    }
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

timeout 280 "$PY" -m stages.training.bench --arch "$ARCH" --batch-size "$BATCH" --device "$DEVICE" \
    --precision "$PRECISION" --classes "$CLASSES" --steps "$STEPS" --warmup "$WARMUP" \
    ${COMPILE:+--compile} ${PEAK_TFLOPS:+--peak-tflops "$PEAK_TFLOPS"} --out "$OUT"

"$PY" - "$OUT" <<'EOF'
import json
import sys

result = json.load(open(sys.argv[1]))
print(f"{result['arch']} batch {result['batch_size']} {result['precision']} on {result['device_name']}")
for name in ("flyp", "starft"):
    m = result["methods"][name]
    mfu = "n/a" if m["mfu"] is None else f"{100 * m['mfu']:.1f}%"
    print(f"{name:>7}: {m['samples_per_s']:8.1f} samples/s  MFU {mfu}  ({m['flops_per_step'] / 1e12:.2f} TFLOP/step)")
ratios = result["ratios"]
print(f"starft/flyp {ratios['starft_over_flyp']:.3f}  reference/starft {ratios['reference_over_starft']:.3f}")
EOF
