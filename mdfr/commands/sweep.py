"""``mdfr sweep``: validate, run, resume, list and inspect sweep files on Ray Tune."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from mdfr.commands import add_set_option
from mdfr.commands.options import NON_NEGATIVE, POSITIVE
from mdfr.errors import MdfrError
from mdfr.names import VAL_ACC, Tag, acc_metric

if TYPE_CHECKING:  # the driver imports Ray: only inside the commands that run a sweep
    from mdfr.sweep.driver import SweepOutcome


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="validate, run and resume sweep files on Ray Tune")
    p.set_defaults(func=lambda a: _usage(p))
    ss = p.add_subparsers(dest="sweep_command", metavar="ACTION")

    v = ss.add_parser("validate", help="check a sweep file fully, without starting Ray")
    v.add_argument("file", help="sweep file (YAML)")
    _add_set(v)
    v.add_argument("--list", action="store_true", help="also list every trial slot")
    v.set_defaults(func=validate)

    r = ss.add_parser("run", help="run a sweep: stages, then one Ray Tune experiment")
    r.add_argument("file", help="sweep file (YAML)")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (overrides the file)")
    r.add_argument("--storage", help="Tune storage folder (overrides the file)")
    r.add_argument("--address", help="Ray address (auto, ray://host:10001); default: local Ray")
    r.add_argument("--num-cpus", type=POSITIVE, help="CPUs of a locally started Ray instance")
    r.add_argument(
        "--num-gpus",
        type=NON_NEGATIVE,
        help="GPUs a locally started Ray instance declares (default: detected; logical GPUs "
        "without CUDA simulate a GPU machine)",
    )
    r.add_argument("--quiet", action="store_true", help="no live progress table")
    _add_set(r)
    r.set_defaults(func=run)

    c = ss.add_parser("resume", help="continue a sweep whose driver stopped")
    c.add_argument("sweep", metavar="NAME_OR_PATH", help="sweep folder, or name (newest run)")
    c.add_argument("--storage", help="where to look for NAME (default results/ray)")
    c.add_argument("--address", help="Ray address; default: local Ray")
    c.add_argument("--num-cpus", type=POSITIVE, help="CPUs of a locally started Ray instance")
    c.add_argument(
        "--num-gpus", type=NON_NEGATIVE, help="GPUs a locally started Ray instance declares"
    )
    c.add_argument(
        "--retry-errored", action="store_true", help="also rerun trials that failed for good"
    )
    c.add_argument("--quiet", action="store_true", help="no live progress table")
    c.set_defaults(func=resume)

    ls = ss.add_parser("list", help="list sweep folders under the storage")
    ls.add_argument("--storage", help="storage folder (default results/ray)")
    ls.set_defaults(func=list_)

    st = ss.add_parser("status", help="trial outcomes of a sweep, from MLflow")
    st.add_argument("sweep", metavar="NAME_OR_PATH")
    st.add_argument("--storage", help="where to look for NAME (default results/ray)")
    st.set_defaults(func=status)


def _add_set(p: argparse.ArgumentParser) -> None:
    add_set_option(
        p,
        "override a sweep-file key: base.train.epochs=2, grid.seed=[0], "
        "search_alg.num_samples=4 (repeatable)",
    )


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return 2


def validate(args: argparse.Namespace) -> int:
    # Lazy (CLI boundary): imported only when this subcommand runs.
    from mdfr.sweep.spec import describe_scheduler, load_sweep

    plan = load_sweep(args.file, args.overrides)
    for w in plan.warnings:
        print(f"warning: {w}", file=sys.stderr)
    axes = " x ".join(f"{a}({len({c.values[a] for c in plan.cells})})" for a in plan.axes)
    search = ", ".join(a.name for a in plan.search) or "none"
    once = sum(1 for c in plan.cells if not c.search) if plan.search else 0
    note = f" ({once} cells without a search axis run once)" if once else ""
    print(
        f"{args.file}: ok: {plan.name}: {len(plan.cells)} cells [{axes or 'no grid'}] x "
        f"{plan.num_samples} samples = {plan.num_trials} trials{note}; search: {search}; "
        f"scheduler: {plan.scheduler.name}; resources: {plan.resources.cpu} cpu, "
        f"{plan.resources.gpu:g} gpu per trial"
    )
    print(f"  scheduler: {describe_scheduler(plan)}")
    if args.list:
        for key in plan.trial_keys():
            print(f"  {key}")
    return 0


def run(args: argparse.Namespace) -> int:
    # Lazy (CLI boundary): imported only when this subcommand runs.
    from mdfr.sweep.driver import run_sweep
    from mdfr.sweep.spec import load_sweep

    plan = load_sweep(args.file, args.overrides)
    for w in plan.warnings:
        print(f"warning: {w}", file=sys.stderr)
    out = run_sweep(
        plan,
        storage=args.storage,
        tracking_uri=args.tracking_uri,
        address=args.address,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        verbose=0 if args.quiet else 1,
    )
    return _summary(out)


def resume(args: argparse.Namespace) -> int:
    # Lazy (CLI boundary): imported only when this subcommand runs.
    from mdfr.sweep.driver import resume_sweep

    out = resume_sweep(
        args.sweep,
        storage=args.storage,
        address=args.address,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        retry_errored=args.retry_errored,
        verbose=0 if args.quiet else 1,
    )
    return _summary(out)


def _summary(out: SweepOutcome) -> int:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(out.counts.items()))
    if out.unfinished:
        print(
            f"sweep stopped: {out.unfinished} of {out.planned} trials not finished "
            f"({counts}); continue with `mdfr sweep resume {out.exp_dir}`",
            file=sys.stderr,
        )
        print(f"MLflow: experiment {out.experiment!r}, parent run {out.parent_run_id}")
        return 130  # the shell's code for a run stopped by Ctrl-C
    print(f"sweep done: {len(out.trials)} trials ({counts}); folder {out.exp_dir}")
    print(f"MLflow: experiment {out.experiment!r}, parent run {out.parent_run_id}")
    if out.champion:
        uri = out.champion["model_uri"]
        print(f"use it: mdfr identify IMAGES --model {uri} --tracking-uri {out.tracking_uri}")
    if out.failed:
        raise MdfrError(
            f"{out.failed} trial(s) failed for good; fix the cause, then "
            f"`mdfr sweep resume {out.exp_dir} --retry-errored`"
        )
    return 0


def list_(args: argparse.Namespace) -> int:
    # Lazy (CLI boundary): imported only when this subcommand runs.
    from mdfr.sweep.state import list_sweeps

    rows = list_sweeps(args.storage)
    if not rows:
        print(f"no sweeps under {args.storage or 'results/ray'}")
    for r in rows:
        print(f"{r['name']:<16} {r['finished']:>4}/{r['trials']:<4} {r['phase']:<7} {r['path']}")
        if r.get("error"):
            print(f"warning: {r['error']}", file=sys.stderr)
    return 0


def status(args: argparse.Namespace) -> int:
    # Lazy (CLI boundary): imported only when this subcommand runs.
    from mdfr.sweep.state import SweepState, find_sweep
    from mdfr.tracking import connect, fetch_sweep_runs

    exp_dir = find_sweep(args.sweep, args.storage)
    state = SweepState.read(exp_dir)
    connect(state.tracking_uri, f"{exp_dir}/mdfr_sweep.json: tracking_uri")
    runs = fetch_sweep_runs(
        state.plan.experiment, state.tracking_uri, parent_run_id=state.parent_run_id
    )
    print(f"{exp_dir}: {len(runs)} trial runs")
    for r in sorted(runs, key=lambda r: r["run_name"] or ""):
        acc = r["metrics"].get(acc_metric("test", "restored"), r["metrics"].get(VAL_ACC))
        acc_s = f"{acc:.4f}" if isinstance(acc, float) else "-"
        outcome = r["tags"].get(Tag.STATUS, "?")
        print(f"  {r['run_name']:<40} {r['status']:<9} {outcome:<9} {acc_s}")
    return 0
