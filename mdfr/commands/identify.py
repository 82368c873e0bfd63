"""``mdfr identify IMAGE_OR_FOLDER --model URI``: the camera model of images, per trained model.

Loads a model logged by a sweep (``models:/<experiment>@champion``, ``models:/<name>/<version>``,
``models:/<model id>``, a run id, a local MLflow model folder, or a trial folder), cuts 64×64
patches of each image, restores them with its MDFRNet, classifies them with its CMI network and
prints, per image, the predicted camera model with its confidence before and after
restoration (mean softmax over the patches). ``--json`` prints the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mdfr.commands import add_tracking_uri_option
from mdfr.commands.options import int_in
from mdfr.errors import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "identify",
        help="predict the camera model of images with a trained model",
        description="Predict the camera model of each image (or every image under a folder) "
        "with a model a sweep logged to MLflow, before and after MDFRNet's restoration.",
    )
    p.add_argument("target", metavar="IMAGE_OR_FOLDER", help="an image, or a folder of images")
    p.add_argument(
        "--model",
        required=True,
        metavar="URI",
        help="models:/<name>@<alias> (e.g. models:/mdfr-smoke@champion), models:/<name>/<version>, "
        "models:/<model id>, a run id, or a local path (MLflow model or trial folder)",
    )
    add_tracking_uri_option(p, "MLflow store holding the model")
    p.add_argument(
        "--patches",
        type=int_in(0),
        default=64,
        help="64x64 patches per image (default 64; 0 = every grid cell)",
    )
    p.add_argument(
        "--selection",
        choices=("grid", "quality", "homogeneous"),
        help="where the patches are cut (default: as in the model's training data)",
    )
    p.add_argument(
        "--codec",
        metavar="SPEC",
        help="compress each image with this codec first (jpeg:20, learned:<ckpt>, ...), to "
        "see an attack and the defence on images that were never attacked",
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:<index>")
    p.add_argument("--batch-size", type=int_in(1), default=128, help="patches per forward pass")
    p.add_argument("--skip-bad", action="store_true", help="report unreadable images and go on")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Lazy (CLI boundary): imported only when this subcommand runs.
    from mdfr import identify

    images = identify.find_images(args.target)  # bad input fails before loading anything
    codec = _codec(args.codec)
    device = _device(args.device)
    model = _load(args.model, args.tracking_uri, device)
    root = Path(args.target) if Path(args.target).is_dir() else None
    results = identify.identify(
        model,
        images,
        root=root,
        patches=args.patches,
        selection=args.selection,
        codec=codec,
        batch_size=args.batch_size,
        device=device,
        skip_bad=args.skip_bad,
    )
    acc = identify.accuracy(results, model.views)
    if args.json:
        doc = {
            "model": args.model,
            "info": {k: v for k, v in model.info.items() if k != "classes"},
            "classes": model.classes,
            "codec": args.codec,
            "images": [r.to_json() for r in results],
            "accuracy": acc,
        }
        json.dump(doc, sys.stdout, indent=1)
        print()
    else:
        _print_text(args.model, model, results, acc, args.codec)
    bad = sum(1 for r in results if r.error)
    return 2 if bad == len(results) else 0


def _codec(spec: str | None):
    if not spec:
        return None
    # Lazy (CLI boundary): imported only when this subcommand runs.
    from mdfr.data.codecs import create_codec

    return create_codec(spec, device="cpu")


def _device(name: str) -> str:
    # Lazy (CLI boundary): imported only when this subcommand runs (torch).
    from mdfr.devices import resolve_device

    return resolve_device(name, "--device")


def _load(uri: str, tracking_uri: str, device: str):
    # Lazy (CLI boundary): imported only when this subcommand runs.
    from mdfr import tracking
    from mdfr.tracking import models

    if not Path(uri).expanduser().exists():
        models.check_uri(uri)
        tracking_uri = tracking.resolve_uri(
            tracking.check_tracking_uri(tracking_uri, "--tracking-uri")
        )
        if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[10:]).is_file():
            # Opening a missing SQLite store would create an empty one.
            raise UsageError(f"--tracking-uri: no MLflow store at {tracking_uri[10:]}")
        tracking_uri = tracking.connect(tracking_uri).uri
    return models.load_model(uri, tracking_uri, device)


def _print_text(uri, model, results, acc, codec) -> None:
    info = model.info
    what = f"{info.get('kind')}, {info.get('backbone')}"
    if info.get("setup"):
        what += f", setup {info['setup']}"
    print(f"model {uri} ({what}; {len(model.classes)} camera models)")
    if codec:
        print(f"images compressed with {codec} first")
    for r in results:
        truth = f"; true: {r.truth}" if r.truth else ""
        print(f"{r.path} ({r.patches} patches{truth})")
        if r.error:
            print(f"  error: {r.error}")
            continue
        for view, pred in r.views.items():
            label = _label(view, model.views)
            print(f"  {label + ':':<20} {pred['model']} ({100 * pred['confidence']:.1f}%)")
    if acc:
        known = sum(1 for r in results if r.truth and not r.error)
        parts = ", ".join(f"{_label(v, model.views)} {100 * a:.1f}%" for v, a in acc.items())
        print(f"accuracy on {known} images with a known camera: {parts}")


def _label(view: str, views: list[str]) -> str:
    # Lazy (CLI boundary): imported only when this subcommand runs.
    from mdfr.identify import VIEW_LABELS

    return "prediction" if len(views) == 1 else VIEW_LABELS.get(view, view)
