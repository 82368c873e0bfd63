"""The GPU check (``scripts/gpu_check.sh``): GPU memory per trial, and one table and one JSON.

The script runs the benchmarks as separate parts, each under its own time limit, and writes
each part's JSON; this module adds the part no other benchmark measures and assembles them:

- ``python -m mdfr.bench.gpucheck memory --json PATH``: peak GPU memory of one trial's
  training step (MDFRNet at paper width in front of its CMI net, bf16 + channels-last, the
  engine's step) at batch 64, 128 and 256, and its patches/s at each;
- ``python -m mdfr.bench.gpucheck summary --dir DIR --day DAY --json PATH``: reads the parts
  (step, memory, packing, loader) of that day, prints one table and writes one JSON with the
  figures and the targets: bf16 MFU, 4 trials per GPU against 1, memory at batch 256
  (<= 18 GiB so four trials fit an 80 GB GPU), loader feed rate against the step rate.

``--device cpu --quick`` runs the same code on a tiny network on the CPU (tests): every figure
that needs CUDA is then missing, and says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mdfr.bench.machine import envelope, write_json

MEMORY_GOAL_GIB = 18.0  # at batch 256: four trials fit an 80 GB GPU
PACKING_GOAL = 2.0  # aggregate throughput of 4 trials per GPU over 1
PARTS = {
    "step": "step-{device}-{day}.json",
    "memory": "gpu-memory-{device}-{day}.json",
    "packing": "packing-{device}-{day}.json",
    "loader": "loader-gpuhost-{day}.json",
}


def measure_memory(
    device: str, batches: Sequence[int], quick: bool = False, variant: str = "bf16_channels_last"
) -> dict[str, Any]:
    """Peak GPU memory and patches/s of one trial's training step at each batch size."""
    # Lazy: torch and the models load only when a measurement runs (not for `summary`).
    from mdfr.bench.step import VARIANTS, default_setup, flops_per_patch, measure, skip_reason

    doc = envelope("gpu-memory", device, {"batches": list(batches), "variant": variant})
    rows = []
    for batch in batches:
        setup = default_setup(device, quick, batch=batch, warmup=2, steps=3 if quick else 10)
        reason = skip_reason(VARIANTS[variant], device, explicit=True)
        if reason:
            rows.append({"batch": batch, "status": "skipped", "reason": reason})
            continue
        r = measure(setup, device, VARIANTS[variant], flops_per_patch(setup)["flops_train_step"],
                    None)  # fmt: skip
        rows.append(
            {
                "batch": batch,
                "status": "ok",
                "max_memory_gib": r.get("max_memory_gib"),
                "max_memory_reserved_gib": r.get("max_memory_reserved_gib"),
                "patches_per_s": r["patches_per_s"],
            }
        )
        print(f"memory: batch {batch:4d}: {r.get('max_memory_gib')} GiB, "
              f"{r['patches_per_s']:.0f} patches/s", flush=True)  # fmt: skip
    doc["results"] = {"variant": variant, "rows": rows, "setup": {"width": setup.width,
                      "depth": setup.depth, "backbone": setup.backbone}}  # fmt: skip
    doc["targets"] = {"memory_gib_at_256_max": MEMORY_GOAL_GIB}
    return doc


# --------------------------------------------------------------------------- assembling


def load_parts(folder: Path, day: str, device: str = "cuda") -> dict[str, dict[str, Any] | None]:
    out: dict[str, dict[str, Any] | None] = {}
    for part, pattern in PARTS.items():
        path = folder / pattern.format(device=device, day=day)
        out[part] = json.loads(path.read_text()) if path.is_file() else None
    return out


def assemble(parts: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """The check's figures (``rows``: what, value, goal, met) from the parts' documents."""
    rows: list[dict[str, Any]] = []
    step, memory, packing, loader = (parts.get(k) for k in PARTS)
    best = _best_bf16(step)
    rows.append(_row("bf16 MFU of the MDFR step, paper width", best and best.get("mfu"),
                     "fraction of the GPU's dense bf16 peak", None))  # fmt: skip
    rows.append(_row("bf16 step throughput (patches/s)", best and best.get("patches_per_s"),
                     f"{best['name']}, batch {best['batch']}" if best else "", None))  # fmt: skip
    k1, k4 = _packing_rows(packing)
    speedup = k4.get("speedup_vs_k1") if k4 else None
    rows.append(_row("4 trials per GPU vs 1 (aggregate throughput)", speedup,
                     f"k=1 {k1 and k1['aggregate_patches_per_s']}, k=4 "
                     f"{k4 and k4['aggregate_patches_per_s']} patches/s", PACKING_GOAL))  # fmt: skip
    mem = {r["batch"]: r for r in (memory or {}).get("results", {}).get("rows", [])}
    for batch in (64, 128, 256):
        # Judged on what the allocator reserved (what four packed trials compete for), not
        # only on what tensors used; without CUDA context (~0.5 GiB per process).
        r = mem.get(batch, {})
        gib = r.get("max_memory_reserved_gib", r.get("max_memory_gib"))
        goal = MEMORY_GOAL_GIB if batch == 256 else None
        note = f"reserved; tensors {r['max_memory_gib']}" if r.get("max_memory_gib") else ""
        rows.append(_row(f"peak GPU memory per trial, batch {batch} (GiB)", gib, note, goal,
                         higher_is_better=False))  # fmt: skip
    feed = _feed_rate(loader)
    step64 = mem.get(64, {}).get("patches_per_s")
    rows.append(_row("loader feed rate / step rate (one trial, batch 64)",
                     round(feed / step64, 2) if feed and step64 else None,
                     f"feed {feed} vs step {step64} patches/s", 1.0))  # fmt: skip
    if k4 and feed:
        per_trial = k4["aggregate_patches_per_s"] / 4
        rows.append(_row("loader feed rate / step rate (each of 4 trials per GPU)",
                         round(feed / per_trial, 2), f"step {per_trial:.0f} patches/s per trial",
                         1.0))  # fmt: skip
    missing = [k for k, v in parts.items() if v is None]
    return {"rows": rows, "missing_parts": missing, "gpu": _gpu(parts)}


def _row(
    what: str, value: Any, note: str, goal: float | None, higher_is_better: bool = True
) -> dict[str, Any]:
    met = None
    if goal is not None and isinstance(value, int | float):
        met = value >= goal if higher_is_better else value <= goal
    return {"what": what, "value": value, "goal": goal, "met": met, "note": note}


def _best_bf16(step: dict[str, Any] | None) -> dict[str, Any] | None:
    variants = (step or {}).get("results", {}).get("variants", [])
    ok = [v for v in variants if v.get("status") == "ok" and v.get("bf16")]
    return max(ok, key=lambda v: v["patches_per_s"], default=None)


def _packing_rows(doc: dict[str, Any] | None) -> tuple[dict | None, dict | None]:
    rows = ((doc or {}).get("results", {}).get("packing") or {}).get("rows", [])
    by_k = {r["k"]: r for r in rows}
    return by_k.get(1), by_k.get(4)


def _feed_rate(doc: dict[str, Any] | None) -> float | None:
    shards = (doc or {}).get("results", {}).get("shards", [])
    at64 = [r["patches_per_s"] for r in shards if r.get("batch") == 64]
    return at64[0] if at64 else None


def _gpu(parts: dict[str, dict[str, Any] | None]) -> str | None:
    for doc in parts.values():
        if doc and doc.get("machine", {}).get("gpu_name"):
            return str(doc["machine"]["gpu_name"])
    return None


def table(summary: dict[str, Any]) -> str:
    """The summary as a fixed-width text table."""
    lines = [f"GPU check: {summary.get('gpu') or 'no GPU'}"]
    lines.append(f"{'figure':58s} {'value':>12s} {'goal':>8s}  met")
    for r in summary["rows"]:
        value = "n/a" if r["value"] is None else f"{r['value']:.4g}"
        goal = "" if r["goal"] is None else f"{r['goal']:g}"
        met = {True: "yes", False: "NO", None: ""}[r["met"]]
        lines.append(f"{r['what']:58s} {value:>12s} {goal:>8s}  {met:3s} {r['note']}".rstrip())
    if summary["missing_parts"]:
        lines.append(f"missing parts (failed or skipped): {', '.join(summary['missing_parts'])}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mdfr.bench.gpucheck", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("memory", help="peak GPU memory per trial at several batch sizes")
    m.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    m.add_argument("--batch-sizes", default="64,128,256")
    m.add_argument("--quick", action="store_true", help="tiny network (tests)")
    m.add_argument("--variant", default="bf16_channels_last", help="step variant (tests: fp32)")
    m.add_argument("--json", required=True)
    s = sub.add_parser("summary", help="one table and one JSON from the parts of a day")
    s.add_argument("--dir", default="results/bench")
    s.add_argument("--day", required=True)
    s.add_argument("--device", default="cuda")
    s.add_argument("--json", required=True)
    args = p.parse_args(argv)
    if args.cmd == "memory":
        # Lazy: torch only here (summary runs without it).
        from mdfr.bench.step import VARIANTS

        if args.variant not in VARIANTS:
            print(f"gpucheck memory: --variant {args.variant!r} is not one of "
                  f"{', '.join(VARIANTS)}", file=sys.stderr)  # fmt: skip
            return 2
        if args.device == "cuda":
            # Lazy: torch only here (summary runs without it).
            import torch

            if not torch.cuda.is_available():
                print("gpucheck memory: CUDA is not available", file=sys.stderr)
                return 2
        batches = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
        doc = measure_memory(args.device, batches, quick=args.quick, variant=args.variant)
    else:
        summary = assemble(load_parts(Path(args.dir), args.day, args.device))
        print(table(summary))
        doc = {"kind": "gpu-check", "day": args.day, **summary}
    for path in write_json(doc, args.json):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
