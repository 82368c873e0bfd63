"""``mdfr train CONFIG.yaml [--set k=v ...]``: one trial without Ray."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="run one trial (pretrain, finetune or mdfr) without Ray")
    p.add_argument("config", help="trial config YAML (a TrialConfig)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a dotted config key, e.g. --set model.width=8 (repeatable)",
    )
    p.add_argument("--check", action="store_true", help="validate the config, print it and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from mdfr.config import load_yaml

    cfg = load_yaml(args.config, args.overrides)
    if args.check:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        print(f"# config hash {cfg.hash()}")
        return 0
    from mdfr.errors import MdfrError

    raise MdfrError("training is not implemented yet (see the engine issue); use --check")
