"""``mdfr train CONFIG.yaml [--set k=v ...] [--resume CKPT]``: one trial without Ray.

The very same ``engine.train_trial`` a sweep runs, with a progress bar, logging to MLflow when a
tracking URI is given (``--tracking-uri`` or ``MLFLOW_TRACKING_URI``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from mdfr.commands import add_set_option
from mdfr.names import Kind, Tag


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="run one trial (pretrain, finetune or mdfr) without Ray",
        description="Run one trial by hand: the same function a sweep runs, without Ray.",
    )
    p.add_argument("config", help="trial config YAML (a TrialConfig; see mdfr/config.py)")
    add_set_option(p, "override a dotted config key, e.g. --set model.width=8 (repeatable)")
    p.add_argument(
        "--resume", metavar="CKPT", help="checkpoint folder (or state.pt) to resume from"
    )
    p.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI; none = no tracking)",
    )
    p.add_argument("--experiment", default="mdfr-train", help="MLflow experiment name")
    p.add_argument("--check", action="store_true", help="validate the config, print it and exit")
    p.add_argument("--json", dest="json_out", metavar="PATH", help="also write the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Lazy (CLI boundary): imported only when this subcommand runs.
    import yaml

    from mdfr import tracking
    from mdfr.config import load_yaml

    cfg = load_yaml(args.config, args.overrides)
    if args.tracking_uri:
        tracking.check_tracking_uri(args.tracking_uri, "--tracking-uri")
    if args.check:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        print(f"# config hash {cfg.hash()}")
        return 0

    # Lazy (CLI boundary): torch, the models and the data loaders, past --check only.
    from mdfr.engine import default_output_dir, train_trial

    if not cfg.output_dir:
        cfg = cfg.replace(output_dir=str(default_output_dir(cfg).resolve()))
    tracker = store = run_id = None
    if args.tracking_uri:
        tracking.check_reachable(args.tracking_uri)
        store = tracking.Store(args.tracking_uri)
        exp_id = store.ensure_experiment(args.experiment)
        # Same config into the same folder is the same run (a --resume continues it).
        run_id, _ = store.ensure_run(
            exp_id,
            {Tag.KIND: Kind.TRAIN, Tag.CONFIG_HASH: cfg.hash(), Tag.OUTPUT_DIR: cfg.output_dir},
            {Tag.GIT_COMMIT: tracking.git_commit()},
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
