"""One module per ``mdfr`` subcommand; each exposes ``add_parser(subparsers)``.

The CLI's lazy-import boundary: ``mdfr --help`` imports every module here, so at the top they
import only the standard library and the light ``mdfr.commands``, ``mdfr.errors`` and
``mdfr.names``. Everything else (configs, torch, Ray, MLflow) is imported inside the function
that runs the subcommand, under a ``# Lazy (CLI boundary)`` comment;
``tests/test_imports.py`` holds the line.
"""

from __future__ import annotations

import argparse
import os

DEFAULT_TRACKING_URI = "sqlite:///results/mlflow.db"


def add_set_option(parser: argparse.ArgumentParser, help: str) -> None:
    """The repeatable ``--set KEY=VALUE`` override every config-reading command takes."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def add_tracking_uri_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--tracking-uri`` of the commands that read a store: $MLFLOW_TRACKING_URI, else the
    embedded default."""
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI,
        help=f"{what} (default $MLFLOW_TRACKING_URI or {DEFAULT_TRACKING_URI})",
    )
