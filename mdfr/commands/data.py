"""``mdfr data``: make, prepare and inspect camera patch datasets.

- ``mdfr data synth --out DIR``: a synthetic camera dataset in VISION's layout;
- ``mdfr data prepare --images DIR --codec SPEC --out DATASET``: paired patch shards;
- ``mdfr data spectra DATASET --out PNG``: the paper's Fig. 2 for a prepared dataset;
- ``mdfr data info DATASET``: the manifest summary.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mdfr.commands.options import NON_NEGATIVE, SEED, float_in, int_in
from mdfr.errors import UsageError

FRACTION = float_in(0, 1, above=True, below=True)
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")

HELP = "make, prepare and inspect camera patch datasets"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help=HELP, description=HELP)
    p.set_defaults(func=_no_action, _parser=p)
    actions = p.add_subparsers(dest="action", metavar="ACTION")

    s = actions.add_parser(
        "synth",
        help="write a synthetic camera dataset (VISION layout) from scikit-image's photos",
        description="Simulate camera models (demosaicing, colour, tone, noise, JPEG tables) and "
        "devices (PRNU) photographing scikit-image's bundled photos; VISION folder layout.",
    )
    s.add_argument("--out", required=True, help="target folder")
    s.add_argument("--models", type=int_in(1, 16), default=4, help="camera models, 1-16 (4)")
    s.add_argument(
        "--images-per-device",
        type=int_in(1, 10_000),
        default=20,
        help="natural images per device, 1-10000 (20)",
    )
    s.add_argument(
        "--flat-per-device",
        type=int_in(0, 10_000),
        default=None,
        help="flat images per device, 0-10000 (a quarter of --images-per-device)",
    )
    s.add_argument(
        "--size", type=int_in(64, 4096), default=256, help="image side in pixels, 64-4096 (256)"
    )
    s.add_argument("--seed", type=SEED, default=0, help="master seed, 0-2**32-1 (0)")
    s.add_argument("--force", action="store_true", help="replace an existing different folder")
    s.set_defaults(func=run_synth)

    q = actions.add_parser(
        "prepare",
        help="compress images with a codec and cut paired 64x64 patch shards",
        description="Read a VISION-layout folder, compress every image with the codec, cut "
        "64x64 patches at the same positions in original and compressed image, split by image "
        "or device, and write Arrow shards, manifest.json and the amplitude increment. The "
        "same inputs, options and codec reuse an existing dataset.",
    )
    q.add_argument("--images", required=True, help="VISION-layout image folder")
    q.add_argument(
        "--codec", required=True, help="jpeg:Q, learned:CKPT, compressai:..., external:DIR"
    )
    q.add_argument("--out", required=True, help="dataset folder to write")
    q.add_argument("--subsets", default="nat,flat", help="scene subsets (nat,flat)")
    q.add_argument(
        "--images-per-model",
        type=NON_NEGATIVE,
        default=100,
        help="images per camera model, 0 = all (100); at least 3 for three splits",
    )
    q.add_argument(
        "--patches-per-image",
        type=NON_NEGATIVE,
        default=16,
        help="patches per image, 0 = all cells (16)",
    )
    q.add_argument("--selection", default="grid", choices=("grid", "quality", "homogeneous"))
    q.add_argument("--split-by", default="image", choices=("image", "device"))
    q.add_argument(
        "--val-frac", type=FRACTION, default=0.15, help="validation fraction, in (0, 1) (0.15)"
    )
    q.add_argument(
        "--test-frac", type=FRACTION, default=0.15, help="test fraction, in (0, 1) (0.15)"
    )
    q.add_argument("--seed", type=SEED, default=0, help="seed for choice, split and positions (0)")
    q.add_argument("--skip-bad", action="store_true", help="skip unusable inputs and count them")
    q.add_argument("--force", action="store_true", help="rebuild even if an identical one exists")
    q.add_argument("--device", default=None, help="device for learned codecs (auto, cpu, cuda)")
    q.set_defaults(func=run_prepare)

    f = actions.add_parser(
        "spectra",
        help="draw the paper's Fig. 2 (average amplitude and phase) for a dataset",
        description="Average log-amplitude and phase of original vs compressed patches, with "
        "lateral and longitudinal slices (the MDFRNet paper's Fig. 2).",
    )
    f.add_argument("dataset", help="prepared dataset folder")
    f.add_argument("--out", required=True, help="PNG file to write")
    f.add_argument("--split", default="train", choices=("train", "val", "test"))
    f.add_argument(
        "--limit",
        type=NON_NEGATIVE,
        default=20000,
        help="at most this many patches, 0 = all (20000)",
    )
    f.set_defaults(func=run_spectra)

    i = actions.add_parser("info", help="print a prepared dataset's manifest summary")
    i.add_argument("dataset", help="prepared dataset folder")
    i.set_defaults(func=run_info)


def _no_action(args: argparse.Namespace) -> int:
    args._parser.print_help(sys.stderr)
    raise UsageError("choose an action: synth, prepare, spectra or info")


def run_synth(args: argparse.Namespace) -> int:
    # Lazy (CLI boundary): imported only when this subcommand runs.
    from mdfr.data.synthetic import synthesize

    synthesize(
        args.out,
        models=args.models,
        images_per_device=args.images_per_device,
        size=args.size,
        seed=args.seed,
        flat_per_device=args.flat_per_device,
        force=args.force,
        progress=sys.stderr.isatty(),
        log=print,
    )
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    # Lazy (CLI boundary): imported only when this subcommand runs.
    from mdfr.data.patches import prepare

    prepare(
        args.images,
        args.codec,
        args.out,
        subsets=args.subsets,
        images_per_model=args.images_per_model,
        patches_per_image=args.patches_per_image,
        selection=args.selection,
        split_by=args.split_by,
        val_frac=args.val_frac,
        test_frac=args.test_frac,
        seed=args.seed,
        skip_bad=args.skip_bad,
        force=args.force,
        progress=sys.stderr.isatty(),
        log=print,
        device=args.device,
    )
    return 0


def run_spectra(args: argparse.Namespace) -> int:
    # Lazy (CLI boundary): imported only when this subcommand runs.
    import numpy as np

    from mdfr.data.loader import PatchDataset, load_manifest
    from mdfr.data.spectra import draw_figure, spectrum_stats

    out = Path(args.out)
    if out.is_dir() or out.suffix.lower() not in FIGURE_SUFFIXES:
        # matplotlib would add .png to a bare name and report nothing
        raise UsageError(
            f"--out {out}: expected an image file ending in {', '.join(FIGURE_SUFFIXES)}"
        )
    manifest = load_manifest(args.dataset)
    ds = PatchDataset(args.dataset, args.split, limit=args.limit)
    if len(ds) == 0:
        raise UsageError(f"{args.dataset}: split {args.split!r} has no patches")
    # Chunks keep memory flat however large the split is.
    chunks = (
        tuple(t.numpy() for t in ds.batch(np.arange(i, min(i + 2048, len(ds))))[:2])
        for i in range(0, len(ds), 2048)
    )
    stats = spectrum_stats(chunks)
    title = f"{manifest['codec']['spec']}: {len(ds)} {args.split} patches of dataset {manifest['dataset_hash']}"
    out = draw_figure(stats, args.out, title=title)
    print(f"wrote {out}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    # Lazy (CLI boundary): imported only when this subcommand runs.
    from mdfr.data.loader import load_manifest

    print(format_info(load_manifest(args.dataset), args.dataset), end="")
    return 0


def format_info(m: dict, where: str) -> str:
    """A human-readable summary of a manifest."""
    opts = m["options"]
    lines = [
        f"dataset   {where}",
        f"hash      {m['dataset_hash']}   (created {m.get('created', '?')}, {m.get('seconds', '?')} s)",
        f"images    {m['inputs'].get('root', '?')}  ({m['inputs']['images']} used)",
        f"codec     {m['codec']['spec']}  (fingerprint {m['codec']['fingerprint'][:12]})",
        "options   "
        + ", ".join(f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in opts.items()),
    ]
    for name in ("bpp", "psnr"):
        s = m["stats"][name]
        if s["count"]:
            lines.append(
                f"{name:<9} mean {s['mean']:.3f}  median {s['median']:.3f}  "
                f"min {s['min']:.3f}  max {s['max']:.3f}  ({s['count']} images)"
            )
    splits = m["splits"]
    width = max([len(c) for c in m["classes"]] + [5])
    header = f"{'model':<{width}}  " + "  ".join(f"{s:>15}" for s in splits)
    lines += ["", "patches (images) per split:", header]
    for c in m["classes"]:
        cells = [
            f"{splits[s]['per_model'][c]['patches']:>8} ({splits[s]['per_model'][c]['images']:>4})"
            for s in splits
        ]
        lines.append(f"{c:<{width}}  " + "  ".join(f"{x:>15}" for x in cells))
    total = [f"{splits[s]['patches']:>8} ({splits[s]['images']:>4})" for s in splits]
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{x:>15}" for x in total))
    if m.get("skipped"):
        lines.append(f"\nskipped {len(m['skipped'])} bad input(s):")
        lines += [f"  {s['problem']}" for s in m["skipped"][:20]]
    return "\n".join(lines) + "\n"
