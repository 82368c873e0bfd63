"""``mdfr bench step|loader|sweep|all``: throughput benchmarks, results as JSON.

Results go to ``results/bench/<kind>-<device>-<date>.json`` (or ``--json PATH``), and also to
``$OUT`` when that folder is set (device machines copy it back). Every file describes the
machine (CPU, cores, load average, torch/CUDA, GPU, git commit). Exit status 1 when a
benchmark or a step variant failed (the file is still written), 0 otherwise; variants that cannot
run on the device are recorded as skipped, with the reason.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mdfr.commands.options import NON_NEGATIVE_FLOAT, POSITIVE, POSITIVE_FLOAT
from mdfr.errors import UsageError

HELP = "measure training, loading and sweep throughput, and the demo's memory"


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help=HELP,
        description="Measure MDFRNet training-step throughput (patches/s, TFLOP/s, MFU), data "
        "loading (shards vs per-sample JPEG decoding) and sweep overhead / GPU packing; write "
        "the figures as JSON under results/bench/.",
    )
    p.add_argument(
        "kind",
        choices=("step", "loader", "sweep", "scale", "memory", "all"),
        help="what to measure (all: step, loader and sweep)",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the step and packing benchmarks run (default: cuda if available)",
    )
    p.add_argument(
        "--json",
        dest="json_path",
        metavar="PATH",
        help="result file (default results/bench/<kind>-<device>-<date>.json)",
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes and short timings (tests, smoke checks)"
    )
    p.add_argument(
        "--cache",
        metavar="DIR",
        help="where bench datasets are made and kept (default results/cache/bench)",
    )

    g = p.add_argument_group("step")
    g.add_argument(
        "--backbone", help="CMI backbone (default dpec_convnext; quick: test_dpec_convnext)"
    )
    g.add_argument("--width", type=int, help="MDFRNet UNet width (default 64, the paper's)")
    g.add_argument("--depth", type=int, help="MDFRNet UNet depth (default 4)")
    g.add_argument(
        "--batch-size", dest="batch", type=int, help="patches per step (default: cuda 256, cpu 4)"
    )
    g.add_argument("--steps", type=int, help="timed steps per variant")
    g.add_argument("--warmup", type=int, help="untimed steps first")
    g.add_argument(
        "--variants",
        type=_names,
        metavar="A,B",
        help="step variants (fp32, bf16, bf16_channels_last, bf16_channels_last_compile,"
        " bf16_channels_last_nosync, fp32_channels_last, fp32_compile)",
    )
    g.add_argument(
        "--peak-tflops",
        type=POSITIVE_FLOAT,
        help="device peak for MFU (default: looked up from the GPU name)",
    )
    g.add_argument(
        "--no-cudnn-benchmark",
        dest="cudnn_benchmark",
        action="store_false",
        default=None,
        help="do not let cuDNN autotune convolutions",
    )

    g = p.add_argument_group("loader")
    g.add_argument(
        "--dataset",
        metavar="DIR",
        help="prepared dataset (default: a synthetic one, made once under --cache)",
    )
    g.add_argument("--seconds", type=POSITIVE_FLOAT, help="timed seconds per loader measurement")
    g.add_argument(
        "--batch-sizes",
        dest="batch_sizes",
        type=_ints,
        metavar="N,M",
        help="shard-loader batch sizes (default 64,256; the first is compared)",
    )

    g = p.add_argument_group("sweep")
    g.add_argument("--trials", type=int, help="trials of the overhead sweep (default 4)")
    g.add_argument(
        "--trial-seconds",
        dest="trial_s",
        type=POSITIVE_FLOAT,
        help="length of each trial (default 30)",
    )
    g.add_argument("--epochs", type=int, help="reports per trial (default 5)")
    g.add_argument("--concurrency", type=int, help="trials at once (default 2)")
    g.add_argument(
        "--checkpoint-mb",
        dest="checkpoint_mb",
        type=NON_NEGATIVE_FLOAT,
        help="checkpoint each trial writes per epoch (default 1; paper width ~360)",
    )
    g.add_argument(
        "--no-overhead",
        dest="overhead",
        action="store_false",
        default=None,
        help="skip the overhead sweep (GPU packing only)",
    )
    g.add_argument(
        "--packing",
        type=_ints,
        metavar="K,K",
        help="trials per GPU to compare (default 1,4; cuda only)",
    )
    g.add_argument(
        "--packing-seconds", type=POSITIVE_FLOAT, help="timed window per packing trial (default 20)"
    )
    g.add_argument(
        "--packing-variant", help="step variant packing trials train (default bf16_channels_last)"
    )
    g.add_argument("--packing-batch", type=POSITIVE, help="batch of packing trials (default 64)")
    g.add_argument(
        "--packing-runner",
        choices=("auto", "ray", "processes"),
        help="run packing trials through the sweep driver (ray) or as plain processes",
    )
    g.add_argument("--address", help="Ray cluster address (default: start Ray locally)")

    g = p.add_argument_group("scale (also --trials, --epochs, --trial-seconds, --keep)")
    g.add_argument("--nodes", type=int, help="simulated worker nodes (default 4)")
    g.add_argument(
        "--gpus-per-node", dest="gpus_per_node", type=int, help="logical GPUs per node (default 8)"
    )
    g.add_argument(
        "--tracking",
        dest="tracking_mode",
        choices=("server", "sqlite"),
        help="PostgreSQL-backed MLflow server (default) or a SQLite file on one node",
    )
    g.add_argument(
        "--max-concurrent",
        dest="max_concurrent",
        type=int,
        help="trials at once (default: as many as the simulated GPUs hold)",
    )
    g.add_argument(
        "--timeout", dest="timeout_s", type=float, help="stop the driver after this many seconds"
    )
    g.add_argument(
        "--profile",
        action="store_true",
        default=None,
        help="sample the driver with py-spy and say where its CPU went",
    )
    g.add_argument(
        "--keep",
        action="store_true",
        default=None,
        help="keep the bench sweeps' Ray storage and MLflow files",
    )

    g = p.add_argument_group("memory")
    g.add_argument(
        "--command",
        dest="run_command",
        metavar="CMD",
        help="command whose processes are measured (default: python -m mdfr.demo, i.e. make "
        "demo, in the current directory)",
    )
    g.add_argument(
        "--every", dest="every_s", type=POSITIVE_FLOAT, help="seconds between samples (0.5)"
    )
    p.set_defaults(func=run)  # fmt: skip


def _device(name: str) -> str:
    # Lazy (CLI boundary): imported only when this subcommand runs.
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine")
    return name


def run(args: argparse.Namespace) -> int:
    # Lazy (CLI boundary): imported only when this subcommand runs.
    from mdfr.bench import failures, run_all, run_kind
    from mdfr.bench.machine import default_json_path, write_json

    device = _device(args.device)
    opts = {
        k: getattr(args, k)
        for k in (
            "backbone",
            "width",
            "depth",
            "batch",
            "steps",
            "warmup",
            "variants",
            "peak_tflops",
            "cudnn_benchmark",
            "dataset",
            "seconds",
            "batch_sizes",
            "trials",
            "trial_s",
            "epochs",
            "concurrency",
            "overhead",
            "packing",
            "packing_seconds",
            "packing_variant",
            "packing_batch",
            "packing_runner",
            "address",
            "keep",
            "cache",
            "nodes",
            "gpus_per_node",
            "tracking_mode",
            "max_concurrent",
            "timeout_s",
            "profile",
            "run_command",
            "every_s",
        )  # fmt: skip
    }
    for key in ("width", "depth", "batch", "steps", "trials", "epochs", "concurrency", "nodes",
                "gpus_per_node", "max_concurrent"):  # fmt: skip
        if opts[key] is not None and opts[key] < 1:
            flag = "--batch-size" if key == "batch" else f"--{key.replace('_', '-')}"
            raise UsageError(f"{flag} must be at least 1, got {opts[key]}")
    if opts["warmup"] is not None and opts["warmup"] < 0:
        raise UsageError(f"--warmup must be >= 0, got {opts['warmup']}")
    if args.kind == "all":
        doc = run_all(device, args.quick, opts)
    else:
        doc = run_kind(args.kind, device, args.quick, opts, print)
    file_device = "cpu" if args.kind in ("loader", "scale", "memory") else device
    path = Path(args.json_path) if args.json_path else default_json_path(args.kind, file_device)
    for written in write_json(doc, path):
        print(f"wrote {written}")
    failed = failures(doc)
    for f in failed:
        print(f"FAILED: {f}")
    return 1 if failed else 0
