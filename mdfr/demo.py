"""``make demo``: the main job end to end on the embedded default.

Synthetic camera dataset -> small learned codec (trained once, cached) -> prepared patch
dataset -> ``sweeps/demo.yaml`` (Table II at CPU scale) on a local Ray instance with MLflow in
``results/mlflow.db`` -> report under ``results/demo/``.

Every step goes through the same ``mdfr`` subcommands a user would type, and every step is
cached (synthesis and preparation by content, the codec by its file, pretraining by hash), so
a second run only repeats the sweep and the report.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mdfr.cli import main as mdfr

RESULTS = Path("results")
IMAGES = RESULTS / "data" / "demo-images"
CODEC = RESULTS / "cache" / "demo-codec.pt"
DATASET = RESULTS / "data" / "demo"
REPORT = RESULTS / "demo"
TRACKING = "sqlite:///results/mlflow.db"


def _step(title: str, argv: list[str]) -> None:
    print(f"\n== {title}\n$ mdfr {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    code = mdfr(argv)
    if code != 0:
        raise SystemExit(f"mdfr demo: step failed ({title}), exit code {code}")
    print(f"   ({time.perf_counter() - t0:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mdfr.demo", description=__doc__.splitlines()[0])
    p.add_argument("--sweep", default="sweeps/demo.yaml", help="sweep file to run")
    args = p.parse_args(argv)
    t0 = time.perf_counter()

    _step(
        "1/5 synthetic camera dataset (VISION layout)",
        [
            "data",
            "synth",
            "--out",
            str(IMAGES),
            "--models",
            "6",
            "--images-per-device",
            "8",
            "--size",
            "256",
            "--seed",
            "0",
        ],
    )
    if CODEC.exists():
        print(f"\n== 2/5 learned codec: cached at {CODEC}")
    else:
        _step(
            "2/5 small learned codec (CompressAI bmshj2018-factorized, trained here)",
            [
                "codec",
                "train",
                "--images",
                str(IMAGES),
                "--out",
                str(CODEC),
                "--channels",
                "32,48",
                "--steps",
                "600",
                "--batch",
                "8",
                "--crop",
                "64",
                "--lr",
                "2e-3",
                "--lmbda",
                "0.01",
                "--device",
                "cpu",
            ],
        )
    _step(
        "3/5 AI-compressed patch dataset",
        [
            "data",
            "prepare",
            "--images",
            str(IMAGES),
            "--codec",
            f"learned:{CODEC}",
            "--out",
            str(DATASET),
            "--images-per-model",
            "0",
            "--patches-per-image",
            "16",
            "--seed",
            "0",
            "--device",
            "cpu",
        ],
    )
    _step(
        "4/5 Table II sweep on local Ray",
        [
            "sweep",
            "run",
            args.sweep,
            "--tracking-uri",
            TRACKING,
            "--set",
            f"base.data.dataset={DATASET}",
        ],
    )
    _step(
        "5/5 report",
        [
            "report",
            "table2",
            "--experiment",
            "mdfr-demo",
            "--tracking-uri",
            TRACKING,
            "--out",
            str(REPORT),
        ],
    )

    minutes = (time.perf_counter() - t0) / 60
    print(f"\nmdfr demo: done in {minutes:.1f} min.")
    print(f"  report:    {(REPORT / 'report.md').resolve()}")
    print(f"             {(REPORT / 'report.html').resolve()}")
    print(
        f"  MLflow UI: .venv/bin/mdfr ui --tracking-uri {TRACKING}   (then open http://127.0.0.1:5000)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
