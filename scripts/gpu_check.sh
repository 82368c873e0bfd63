#!/usr/bin/env bash
# One prepared GPU check for the figures of issues 9 and 16, for anyone with a GPU machine.
#
#   scripts/gpu_check.sh                 # from any directory; about 5-7 minutes, at most 8
#   MDFR_PYTHON=/opt/venv/bin/python scripts/gpu_check.sh
#   GPU_CHECK_COMPILE=1 scripts/gpu_check.sh   # also torch.compile (adds up to 150 s)
#
# Measures, at paper width (MDFRNet w=64, depth 4, DPEC ConvNeXt CMI net):
#   1. the training step: fp32, bf16 autocast, bf16 + channels-last (patches/s, TFLOP/s and
#      MFU against the GPU's dense bf16 peak);
#   2. peak GPU memory of one trial at batch 64, 128 and 256 (goal: <= 18 GiB at 256, so four
#      trials pack on an 80 GB GPU), and the step rate at each;
#   3. GPU packing: aggregate throughput of 4 trials sharing the GPU against 1 alone;
#   4. the loader's feed rate (memory-mapped shards, one process, batch 64) against the step
#      rate of one trial and of each of 4 packed trials.
# Each part has a time limit (120 + 90 + 150 + 60 s) so the whole stays under 8 minutes; a part
# that fails or runs out of time is reported and the others still run. At the end: one summary
# table, and all figures in results/bench/gpu-check-<date>.json (each part's JSON beside it,
# all copied to $OUT when set, with this log).
#
# Python: $MDFR_PYTHON, else .venv/bin/python, else python3. The checkout runs from source
# (PYTHONPATH), so nothing is installed when torch, timm and pyyaml are importable; otherwise it
# runs `pip install -e .` once. Packing goes through the sweep driver when Ray is installed,
# else as plain processes (the JSON says which); the loader part needs the data extras
# (colour-demosaicing, scikit-image, pyarrow) and is skipped, not failed, without them.
#
# Exit status: 0 when every GPU figure was measured, 1 when one failed, 2 without a usable GPU
# (checked first, in seconds: nothing else runs).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
if [[ -n ${OUT:-} && -d ${OUT:-} ]]; then
    exec > >(tee -a "$OUT/gpu_check.log") 2>&1
fi
t_start=$SECONDS
day=$(date +%F)
mkdir -p results/bench

PY=${MDFR_PYTHON:-}
if [[ -z $PY ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
echo "== python: $PY ($("$PY" --version 2>&1))"
if ! "$PY" -c "import torch, timm, yaml, mdfr.bench.step" 2>/dev/null; then
    echo "== torch/timm/pyyaml missing: pip install -e ."
    "$PY" -m pip install -q -e . || echo "!! pip install -e . failed; going on with what is installed"
fi
"$PY" - <<'EOF' || exit 2
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(f"!! torch {torch.__version__} sees no CUDA device: nothing to measure here")
print(f"== torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
EOF

echo "== nvidia-smi"
nvidia-smi || echo "!! nvidia-smi not available"

status=0
part() {  # part NAME LIMIT_S CMD...: run CMD under a time limit, report its exit status
    local name=$1 limit=$2
    shift 2
    echo
    echo "== $name (limit ${limit} s, $((SECONDS - t_start)) s elapsed so far)"
    timeout --signal=INT --kill-after=20 "$limit" "$@"
    local rc=$?
    if ((rc != 0)); then echo "!! $name failed (exit $rc)"; fi
    return $rc
}

bench=("$PY" -m mdfr.cli bench)
part "step: eager variants" 120 "${bench[@]}" step --device cuda \
    --variants fp32,bf16,bf16_channels_last --json "results/bench/step-cuda-$day.json" ||
    status=1
part "memory per trial: batch 64, 128, 256" 90 "$PY" -m mdfr.bench.gpucheck memory \
    --device cuda --batch-sizes 64,128,256 --json "results/bench/gpu-memory-cuda-$day.json" ||
    status=1
part "sweep: packing k=1 vs k=4" 150 "${bench[@]}" sweep --device cuda --no-overhead \
    --packing 1,4 --packing-seconds 15 --json "results/bench/packing-cuda-$day.json" || status=1
if "$PY" -c "import colour_demosaicing, skimage, scipy, pyarrow, PIL" 2>/dev/null; then
    # A loader failure is reported but does not fail the GPU check: it measures the CPU side.
    part "loader" 60 "${bench[@]}" loader --batch-sizes 64,256 \
        --json "results/bench/loader-gpuhost-$day.json" || true
else
    echo
    echo "== loader: skipped (needs colour-demosaicing, scikit-image, scipy, pyarrow, pillow)"
fi
if [[ ${GPU_CHECK_COMPILE:-0} == 1 ]]; then
    part "step: torch.compile" 150 "${bench[@]}" step --device cuda \
        --variants bf16_channels_last_compile --json "results/bench/step-compile-cuda-$day.json" ||
        status=1
fi

echo
echo "== summary ($((SECONDS - t_start)) s)"
"$PY" -m mdfr.bench.gpucheck summary --dir results/bench --day "$day" \
    --json "results/bench/gpu-check-$day.json" || status=1
if [[ -n ${OUT:-} && -d ${OUT:-} ]]; then echo "JSON also in $OUT"; fi
exit $status
