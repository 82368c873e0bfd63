"""``mdfr report table1|table2|sweep``: regenerate the paper's tables from MLflow runs.

Reads one sweep (parent run + trial children) through :mod:`mdfr.tracking` and writes
``report.md``, a self-contained ``report.html``, ``report.json`` and ``trials.parquet`` to
``--out`` (default ``results/<experiment>``), then logs the report files and figures to the
sweep's parent run under ``report/`` (``--no-mlflow``: not), so its page in the MLflow UI
shows them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mdfr.commands import add_tracking_uri_option
from mdfr.commands.options import NON_NEGATIVE, name
from mdfr.errors import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="regenerate Table I / Table II reports from MLflow",
        description="Write Table I / Table II (ours with 95% CIs over seeds beside the "
        "paper's), paired tests against fine-tuning, Fig. 4 confusion matrices, Fig. 2 "
        "spectra, search importances and a Parquet export of every trial.",
    )
    p.add_argument(
        "kind",
        choices=("table1", "table2", "sweep", "attack"),
        help="table1: per backbone; table2: the six ablation setups; sweep: per grid cell; "
        "attack: accuracy against the attack's bpp and PSNR (a grid.attack sweep), logged to "
        "the sweep's parent run",
    )
    p.add_argument(
        "--experiment",
        type=name,
        required=True,
        help="MLflow experiment name, e.g. mdfr-demo (required)",
    )
    p.add_argument(
        "--sweep",
        help="sweep name (newest run of it) or parent run id; default: the newest sweep",
    )
    add_tracking_uri_option(p, "MLflow tracking URI")
    p.add_argument("--out", help="output folder (default results/<experiment>)")
    p.add_argument("--paper", help="paper reference numbers (default results/paper_tables.yaml)")
    p.add_argument(
        "--no-mlflow",
        action="store_true",
        help="do not log the report to the sweep's parent run in MLflow",
    )
    p.add_argument(
        "--spectra-patches",
        type=NON_NEGATIVE,
        default=4096,
        help="training patches averaged for Fig. 2 (default 4096; 0 = all)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.kind == "attack":
        return run_attack(args)
    # Lazy (CLI boundary): imported only when this subcommand runs.
    from mdfr.report import build

    out = args.out or f"results/{args.experiment}"
    if Path(out).exists() and not Path(out).is_dir():
        raise UsageError(f"--out {out}: a file; the report is a folder")
    rep = build(
        args.kind,
        args.experiment,
        args.tracking_uri,
        out,
        sweep=args.sweep,
        paper_path=args.paper,
        spectra_patches=args.spectra_patches,
    )
    print(f"report: {rep.markdown}")
    print(f"html:   {rep.html}")
    return _log_to_parent(rep, args)


def _log_to_parent(rep: Any, args: argparse.Namespace) -> int:
    """Attach a written report to its sweep's parent run (unless ``--no-mlflow``)."""
    # Lazy (CLI boundary): imported only when a report is logged.
    from mdfr.tracking import Store
    from mdfr.tracking.sweep_run import log_report

    parent = rep.data.get("parent_run_id")
    if parent and not args.no_mlflow:
        files = [rep.html, rep.markdown, rep.json, rep.out / "figures"]
        paths = log_report(Store(args.tracking_uri), parent, [f for f in files if f.exists()])
        print(f"MLflow: {', '.join(paths)} on parent run {parent}")
    elif not parent:
        print("MLflow: no sweep parent run (runs of `mdfr train`): report not logged there")
    return 0


def run_attack(args: argparse.Namespace) -> int:
    # Lazy (CLI boundary): imported only when this subcommand runs.
    from mdfr.report.attack_report import FIGURE, build_attack

    out = args.out or f"results/{args.experiment}"
    if Path(out).exists() and not Path(out).is_dir():
        raise UsageError(f"--out {out}: a file; the report is a folder")
    rep = build_attack(args.experiment, args.tracking_uri, out, sweep=args.sweep)
    print(f"report: {rep.markdown}")
    print(f"figure: {rep.out / FIGURE}")
    return _log_to_parent(rep, args)
