"""One module per ``mdfr`` subcommand; each exposes ``add_parser(subparsers)``."""

from __future__ import annotations

import argparse


def add_set_option(parser: argparse.ArgumentParser, help: str) -> None:
    """The repeatable ``--set KEY=VALUE`` override every config-reading command takes."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )
