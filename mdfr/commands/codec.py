"""``mdfr codec {list,train,eval}``: the compression attacks a dataset is prepared with.

- ``mdfr codec list``: spec syntax per scheme, the CompressAI zoo and its local weights.
- ``mdfr codec train --images DIR --out CKPT [...]``: train a codec for ``learned:CKPT``.
- ``mdfr codec eval --codec SPEC --images DIR``: bpp (from the real bytes), PSNR and the
  N/16 spectral peak statistic of a codec on a folder of images.
"""

from __future__ import annotations

import argparse
import json
import re
import warnings
from pathlib import Path

from mdfr.commands.options import NON_NEGATIVE, POSITIVE, POSITIVE_FLOAT, SEED, float_in, int_in
from mdfr.errors import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("codec", help="list, train and evaluate AI-compression codecs")
    p.set_defaults(func=lambda args: _help(p))
    csub = p.add_subparsers(dest="codec_command", metavar="SUBCOMMAND")

    ls = csub.add_parser("list", help="codec spec syntax, CompressAI zoo and local weights")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=run_list)

    tr = csub.add_parser("train", help="train a CompressAI codec on a folder of images")
    tr.add_argument("--images", required=True, type=Path, help="folder of images (recursive)")
    tr.add_argument("--out", required=True, type=Path, help="checkpoint to write")
    tr.add_argument(
        "--arch",
        default="bmshj2018-factorized",
        help="bmshj2018-factorized | bmshj2018-hyperprior | mbt2018-mean | mdfr-factorized-s2 | "
        "mdfr-factorized-s3 (ours: 2 or 3 stages, train to a usable quality on a CPU)",
    )
    tr.add_argument(
        "--quality",
        type=int_in(1, 8),
        default=3,
        help="zoo quality level, 1-8: picks the channel widths N, M (3)",
    )
    tr.add_argument("--channels", type=_channels, help="N,M overriding --quality, e.g. 64,96")
    tr.add_argument(
        "--lmbda",
        type=POSITIVE_FLOAT,
        default=0.01,
        help="rate-distortion trade-off: weight of the distortion term, > 0 (0.01)",
    )
    tr.add_argument("--steps", type=POSITIVE, default=2000, help="training steps (2000)")
    tr.add_argument("--batch", type=POSITIVE, default=8, help="crops per step (8)")
    tr.add_argument(
        "--crop", type=POSITIVE, default=64, help="crop side, a multiple of the stride (64)"
    )
    tr.add_argument("--lr", type=POSITIVE_FLOAT, default=1e-4, help="learning rate (1e-4)")
    tr.add_argument(
        "--aux-lr",
        type=POSITIVE_FLOAT,
        default=1e-3,
        help="learning rate of the entropy-bottleneck quantiles (1e-3)",
    )
    tr.add_argument(
        "--decay-at",
        type=float_in(0, 1),
        default=0.9,
        help="fraction of the steps after which the learning rates drop tenfold (0.9)",
    )
    tr.add_argument(
        "--pool", type=POSITIVE, default=2048, help="crops decoded up front and sampled from (2048)"
    )
    tr.add_argument("--seed", type=SEED, default=0, help="seed for crops and weights (0)")
    tr.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:<i>")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.set_defaults(func=run_train)

    ev = csub.add_parser("eval", help="bpp, PSNR and N/16 spectral peaks of a codec")
    ev.add_argument("--codec", required=True, help="codec spec (see 'mdfr codec list')")
    ev.add_argument("--checkpoint", type=Path, help="weights for compressai:<zoo>:<q>")
    ev.add_argument("--images", required=True, type=Path, help="folder of images (recursive)")
    ev.add_argument("--limit", type=NON_NEGATIVE, default=16, help="first N images, 0 = all (16)")
    ev.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:<i>")
    ev.add_argument("--json", action="store_true", help="print JSON")
    ev.set_defaults(func=run_eval)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _channels(text: str) -> tuple[int, int]:
    try:
        n, m = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,M (two integers), got {text!r}") from None
    if n < 1 or m < 1:
        raise argparse.ArgumentTypeError(f"expected two positive channel counts, got {text!r}")
    return n, m


def _plain(text: str) -> str:
    """A docstring line for a terminal: reStructuredText ``literals`` become 'literals'."""
    return re.sub(r"``([^`]+)``", r"'\1'", text)


def _quiet() -> None:
    # compressai's import triggers torch.jit deprecation warnings that say nothing to users.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated")


def with_checkpoint(spec: str, checkpoint: Path | None) -> str:
    """Fold ``--checkpoint`` into a ``compressai:<zoo>:<q>`` spec."""
    if checkpoint is None:
        return spec
    parts = spec.split(":")
    if parts[0] != "compressai" or len(parts) != 3:
        raise UsageError(
            f"--checkpoint goes with a compressai:<zoo-name>:<quality> spec, not {spec!r} "
            "(learned codecs name their checkpoint in the spec: learned:<checkpoint>)"
        )
    return f"{spec}:{checkpoint}"


def run_list(args: argparse.Namespace) -> int:
    _quiet()
    # Lazy (CLI boundary): imported only when this subcommand runs.
    import torch.hub

    from mdfr.data import codecs
    from mdfr.registry import CODECS

    schemes = [
        {
            "scheme": name,
            "syntax": codecs.SCHEME_SYNTAX.get(name, f"{name}:..."),
            "about": _plain((CODECS.get(name).__doc__ or "").strip().splitlines()[0]),
        }
        for name in CODECS.names()
    ]
    zoo = codecs.zoo_table()
    cache = str(Path(torch.hub.get_dir()) / "checkpoints")
    if args.json:
        print(json.dumps({"schemes": schemes, "zoo": zoo, "weights_cache": cache}, indent=2))
        return 0
    print("Codec specs:")
    for s in schemes:
        print(f"  {s['syntax']:<48} {s['about']}")
    print(f"\nCompressAI zoo (compressai:<zoo-name>:<quality>; weights looked up in {cache}):")
    for row in zoo:
        q = row["qualities"]
        local = ",".join(map(str, row["local"])) or "none"
        if not row["published"]:
            local = "no published weights; needs :<checkpoint>"
        print(f"  {row['name']:<28} quality {q[0]}-{q[-1]}   local weights: {local}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    _quiet()
    # Lazy (CLI boundary): imported only when this subcommand runs.
    from mdfr.data.codec_train import CodecTrainConfig, train_codec

    cfg = CodecTrainConfig(
        arch=args.arch,
        quality=args.quality,
        channels=args.channels,
        lmbda=args.lmbda,
        steps=args.steps,
        batch=args.batch,
        crop=args.crop,
        lr=args.lr,
        aux_lr=args.aux_lr,
        decay_at=args.decay_at,
        pool=args.pool,
        seed=args.seed,
        device=args.device,
    )
    stats = train_codec(args.images, args.out, cfg, progress=not args.no_progress)
    print(
        f"wrote {args.out}: {cfg.arch} N,M={','.join(map(str, cfg.resolved_channels()))} "
        f"loss {stats['loss']:.4f}, bpp {stats['bpp']:.3f} (estimate {stats['bpp_loss']:.3f}), "
        f"PSNR {stats['psnr']:.2f} dB, {stats['seconds']:.0f} s"
    )
    print(f"use it as: learned:{args.out}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    _quiet()
    # Lazy (CLI boundary): imported only when this subcommand runs.
    from mdfr.data.codec_train import evaluate_codec, list_images, read_rgb
    from mdfr.data.codecs import create_codec

    codec = create_codec(with_checkpoint(args.codec, args.checkpoint), device=args.device)
    files = list_images(args.images)
    if args.limit > 0:
        files = files[: args.limit]
    images = [read_rgb(f) for f in files]
    rel = [f.relative_to(args.images).as_posix() for f in files]
    stats = evaluate_codec(codec, images, rel)
    if args.json:
        print(json.dumps({"codec": codec.spec, "images": len(files), **stats}, indent=2))
        return 0
    print(f"{codec.spec} on {len(files)} images from {args.images}")
    print(f"  bpp  {stats['bpp']:.4f}  (from the compressed bytes)")
    print(f"  PSNR {stats['psnr']:.2f} dB")
    print(
        f"  N/16 spectral peaks: {stats['peak_ratio_compressed']:.3f} "
        f"(originals {stats['peak_ratio_original']:.3f}, gain {stats['peak_gain']:.2f})"
    )
    return 0
