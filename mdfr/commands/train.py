"""``mdfr train CONFIG.yaml [--set k=v ...] [--resume CKPT]``: one trial without Ray.

The very same ``engine.train_trial`` a sweep runs, with a progress bar, logging to MLflow when a
tracking URI is given (``--tracking-uri`` or ``MLFLOW_TRACKING_URI``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mdfr.commands import add_set_option
from mdfr.commands.options import name
from mdfr.errors import UsageError
from mdfr.names import Kind, Tag

if TYPE_CHECKING:
    from mdfr.config import TrialConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="run one trial (pretrain, finetune or mdfr) without Ray",
        description="Run one trial by hand: the same function a sweep runs, without Ray.",
    )
    p.add_argument(
        "config",
        help="trial config YAML (a TrialConfig; see mdfr/config.py); output_dir and "
        "model.cmi_checkpoint may name config keys in braces, e.g. "
        "results/runs/pretrain-{model.backbone}-s{seed}",
    )
    add_set_option(p, "override a dotted config key, e.g. --set model.width=8 (repeatable)")
    p.add_argument(
        "--resume", metavar="CKPT", help="checkpoint folder (or state.pt) to resume from"
    )
    p.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI; none = no tracking)",
    )
    p.add_argument(
        "--experiment", type=name, default="mdfr-train", help="MLflow experiment name (mdfr-train)"
    )
    p.add_argument("--check", action="store_true", help="validate the config, print it and exit")
    p.add_argument(
        "--force",
        action="store_true",
        help="write into an output_dir that holds another config's run (default: refuse)",
    )
    p.add_argument("--json", dest="json_out", metavar="PATH", help="also write the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Lazy (CLI boundary): imported only when this subcommand runs.
    import yaml

    from mdfr import rundir, tracking
    from mdfr.config import load_yaml

    cfg = rundir.expand(load_yaml(args.config, args.overrides))
    if args.tracking_uri:
        tracking.check_tracking_uri(args.tracking_uri, "--tracking-uri")
    if args.check:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        print(f"# config hash {cfg.hash()}")
        return 0

    # Lazy (CLI boundary): torch, the models and the data loaders, past --check only.
    from mdfr.engine import default_output_dir, train_trial

    if args.json_out and Path(args.json_out).is_dir():  # found now, not after training
        raise UsageError(f"--json {args.json_out}: a folder; give the file to write")

    if not cfg.output_dir:
        cfg = cfg.replace(output_dir=str(default_output_dir(cfg).resolve()))
    warning = cpu_warning(cfg)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    tracker = store = run_id = None
    if args.tracking_uri:
        from mdfr import provenance

        store = tracking.connect(args.tracking_uri, "--tracking-uri")
    rundir.claim(cfg, force=args.force)  # after every check that writes nothing
    if store is not None:
        exp_id = store.ensure_experiment(args.experiment)
        # Same config into the same folder is the same run (a --resume continues it).
        run_id, _ = store.ensure_run(
            exp_id,
            {Tag.KIND: Kind.TRAIN, Tag.CONFIG_HASH: cfg.hash(), Tag.OUTPUT_DIR: cfg.output_dir},
            {
                **provenance.current().tags(),
                **tracking.source_tags(str(Path(args.config).resolve())),
            },
            name=f"{cfg.mode}-{cfg.hash()[:8]}",
        )
        tracker = store.tracker(run_id)

    print(
        f"mdfr train: {cfg.mode} ({cfg.model.backbone}, seed {cfg.seed}) -> {cfg.output_dir}",
        file=sys.stderr,
    )
    try:
        result = train_trial(
            cfg, tracker=tracker, checkpoint=args.resume, progress=sys.stderr.isatty()
        )
    except BaseException:
        if store is not None:
            store.finish(run_id, "FAILED", "failed")
        raise
    if store is not None:
        store.finish(run_id, "FINISHED", result.status)

    print(f"{'status':>16}: {result.status}")
    print(f"{'epochs':>16}: {result.epochs}")
    for key, value in result.accuracy.items():
        if key.startswith("acc_"):
            print(f"{key:>16}: {value:.4f}")
    print(f"{'output':>16}: {result.output_dir}")
    if result.cmi_checkpoint:
        print(f"{'cmi checkpoint':>16}: {result.cmi_checkpoint}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result.to_dict(), f, indent=2, default=str)
    return 0 if result.ok else 1


def cpu_warning(cfg: TrialConfig) -> str | None:
    """Why this trial will be slow on the CPU, or None (a GPU, or test-size networks).

    Paper-size networks train at a few patches per second on a CPU (measured on 2 cores:
    RemNet 1.2, DPEC ConvNeXt 3, MDFRNet width 64 in front of it 0.9), so one run of the
    example trial files takes hours there.
    """
    # Lazy (CLI boundary): resolving a device imports torch.
    from mdfr.devices import resolve_device

    if resolve_device(cfg.train.device, "train.device") != "cpu":
        return None
    big = []
    if not cfg.model.backbone.startswith("test_"):
        big.append(f"backbone {cfg.model.backbone}")
    if cfg.mode == "mdfr" and cfg.model.width >= 32:
        big.append(f"MDFRNet width {cfg.model.width}")
    if not big:
        return None
    return (
        f"training {' and '.join(big)} on the CPU: paper-size networks train at a few patches "
        f"per second there, hours for {cfg.train.epochs} epochs; for a quick look add "
        "--set model.backbone=test_remnet --set model.width=8, or use a GPU"
    )
