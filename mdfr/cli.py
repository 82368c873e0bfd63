"""The ``mdfr`` command line: ``main(argv) -> int``.

Each subcommand lives in ``mdfr/commands/<name>.py`` and exposes ``add_parser(subparsers)``,
which registers its parser with ``func=<callable(args) -> int>``. Heavy imports (torch, Ray,
MLflow) happen inside those callables so ``mdfr --help`` and validation stay fast.

Exit codes: 0 ok; 2 usage or validation error (message, no traceback); 1 runtime failure.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import warnings

from mdfr import __version__
from mdfr.errors import MdfrError

# Order is the order `mdfr --help` shows them in: the researcher's workflow.
SUBCOMMANDS = ("data", "codec", "train", "sweep", "report", "ui", "identify", "bench")


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; keep that, but without the usage spam for
    subcommand-less calls."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mdfr",
        description="Sweeps and ablations for MDFRNet, the camera-model-identification "
        "feature restoration network against AI-compression attacks.",
    )
    parser.add_argument("--version", action="version", version=f"mdfr {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks for errors (or set MDFR_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"mdfr.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # CompressAI 1.2.8 scripts a helper at import time; torch's deprecation notice for that
    # says nothing a user of mdfr can act on.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version (0) and argparse's usage errors (2)
        return e.code if isinstance(e.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get("MDFR_DEBUG") == "1"
    # "data prepare", "sweep run": the same prefix argparse puts on its own errors.
    actions = (getattr(args, k, None) for k in ("action", "codec_command", "sweep_command"))
    command = " ".join([args.command, *(a for a in actions if isinstance(a, str))])
    try:
        return int(args.func(args) or 0)
    except MdfrError as e:
        return _fail(command, str(e), e.exit_code, debug)
    except KeyboardInterrupt:
        print(f"mdfr {command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        # A path the checks did not foresee (permissions, a full disk, a symlink loop).
        where = f"{e.filename}: " if e.filename else ""
        return _fail(command, f"{where}{e.strerror or e}", 1, debug)
    except Exception as e:  # noqa: BLE001 - a bug: one line, the traceback behind --debug
        text = str(e).strip().splitlines()
        msg = f"unexpected {type(e).__name__}: {text[0] if text else ''} (a bug in mdfr? "
        return _fail(command, msg + "rerun with --debug for the traceback)", 1, debug)


def _fail(command: str, message: str, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"mdfr {command}: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
