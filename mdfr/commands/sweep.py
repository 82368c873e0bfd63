"""``mdfr sweep``: not built yet; its issue fills this module."""

from __future__ import annotations

import argparse

from mdfr.errors import MdfrError

HELP = {
    "data": "make, prepare and inspect camera patch datasets",
    "codec": "list and train AI-compression codecs",
    "sweep": "validate, run and resume sweep files on Ray Tune",
    "report": "regenerate Table I / Table II reports from MLflow",
    "ui": "open the MLflow UI on the project's tracking store",
    "bench": "measure training, loading and sweep throughput",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help=HELP["sweep"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise MdfrError("'mdfr sweep' is not implemented yet")
