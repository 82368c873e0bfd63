#!/usr/bin/env bash
# One prepared GPU check for issue 9's figures, for anyone with a GPU machine.
#
#   scripts/gpu_check.sh                 # from any directory; about 4-7 minutes
#   MDFR_PYTHON=/opt/venv/bin/python scripts/gpu_check.sh
#
# Prints nvidia-smi, the training-step benchmark at paper width (fp32, bf16 autocast,
# channels-last, no-host-sync and torch.compile variants; TFLOP/s and MFU against the GPU's
# dense bf16 peak), GPU packing (aggregate throughput of 4 trials sharing the GPU against one
# alone) and the loader benchmark; writes each as JSON to results/bench/ (and to $OUT when set,
# with this log). Each part has a time limit so the whole stays under 8 minutes.
#
# Python: $MDFR_PYTHON, else .venv/bin/python, else python3. The checkout runs from source
# (PYTHONPATH), so nothing is installed when torch, timm and pyyaml are importable; otherwise it
# runs `pip install -e .` once. Packing goes through the sweep driver when Ray is installed,
# else as plain processes (the JSON says which); the loader part needs the data extras
# (colour-demosaicing, scikit-image, pyarrow) and is skipped, not failed, without them: it is
# a CPU figure.
#
# Exit status: 0 when every GPU figure was measured, 1 when one failed, 2 without a usable GPU.
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
# Eager variants first and on their own: a slow compilation cannot cost their figures.
part "step: eager variants" 120 "${bench[@]}" step --device cuda \
    --variants fp32,bf16,bf16_channels_last,bf16_channels_last_nosync \
    --json "results/bench/step-cuda-$day.json" || status=1
part "step: torch.compile" 150 "${bench[@]}" step --device cuda \
    --variants bf16_channels_last_compile --json "results/bench/step-compile-cuda-$day.json" ||
    status=1
part "sweep: packing k=1 vs k=4" 150 "${bench[@]}" sweep --device cuda --no-overhead \
    --packing 1,4 --packing-seconds 15 --json "results/bench/packing-cuda-$day.json" || status=1
if "$PY" -c "import colour_demosaicing, skimage, scipy, pyarrow, PIL" 2>/dev/null; then
    # A loader failure is reported but does not fail the GPU check: it measures the CPU side.
    part "loader" 60 "${bench[@]}" loader --json "results/bench/loader-gpuhost-$day.json" || true
else
    echo
    echo "== loader: skipped (needs colour-demosaicing, scikit-image, scipy, pyarrow, pillow)"
fi

echo
echo "== summary ($((SECONDS - t_start)) s)"
"$PY" - "$day" <<'EOF'
import json, sys
from pathlib import Path

day = sys.argv[1]
def load(name):
    p = Path("results/bench") / name
    return json.loads(p.read_text()) if p.is_file() else None

for name in (f"step-cuda-{day}.json", f"step-compile-cuda-{day}.json"):
    doc = load(name)
    if not doc:
        continue
    r = doc["results"]
    print(f"step ({doc['machine']['gpu_name']}, batch {doc['config']['batch']}, "
          f"{r['flops_per_patch'] / 1e9:.2f} GFLOP/patch, peak {r['peak_tflops']} TFLOP/s):")
    for v in r["variants"]:
        if v["status"] != "ok":
            print(f"  {v['name']:28s} {v['status']}: {v.get('reason')}")
            continue
        mfu = f"{100 * v['mfu']:.1f}%" if v["mfu"] is not None else "n/a"
        print(f"  {v['name']:28s} {v['patches_per_s']:10.0f} patches/s {v['tflops']:8.1f} "
              f"TFLOP/s  MFU {mfu}")
doc = load(f"packing-cuda-{day}.json")
if doc:
    p = doc["results"]["packing"]
    print(f"packing ({p['runner']}, {p['variant']}, batch {p['setup']['batch']}):")
    for row in p["rows"]:
        mfu = f", MFU {100 * row['mfu']:.1f}%" if row.get("mfu") is not None else ""
        print(f"  k={row['k']}: {row['aggregate_patches_per_s']:10.0f} patches/s aggregate, "
              f"x{row.get('speedup_vs_k1', float('nan')):.2f} vs k=1{mfu}")
doc = load(f"loader-gpuhost-{day}.json")
if doc:
    r = doc["results"]
    print(f"loader: shards {r['shards_patches_per_s']:.0f} patches/s, PIL "
          f"{r['pil_best_patches_per_s']} patches/s, ratio {r['ratio']}")
EOF
if [[ -n ${OUT:-} && -d ${OUT:-} ]]; then echo "JSON also in $OUT"; fi
exit $status
