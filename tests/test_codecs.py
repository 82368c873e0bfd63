"""Codecs: spec parsing, JPEG, external mirrors, CompressAI zoo/checkpoint loading, the learned
codec's real bitstream, training, the N/16 spectral peaks, and ``mdfr codec``.

Nothing is mocked: the zoo tests point TORCH_HOME at a folder holding weights we made (the
real weights cannot be downloaded here) and go through the real cache lookup and loading.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fixtures_codec import TINY_CODEC, heldout_images, skimage_photo, torch_threads
from PIL import Image

from mdfr.cli import main
from mdfr.data.codec_train import (
    CodecTrainConfig,
    evaluate_codec,
    mean_amplitude,
    periodic_peak_ratio,
    psnr,
    read_checkpoint,
    train_codec,
)
from mdfr.data.codecs import (
    CodecResult,
    create_codec,
    resolve_device,
    unpack_bitstream,
    zoo_weights_path,
)
from mdfr.errors import DataError, UsageError


def _rng_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth-ish random image (noise alone would be incompressible)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))
    return np.clip(big + rng.normal(0, 4, big.shape), 0, 255).astype(np.uint8)


# --- spec parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("nope", "is not <scheme>:<arguments>"),
        ("zip:3", "unknown codec 'zip'"),
        ("jpeg:0", "quality must be in 1-100, got 0"),
        ("jpeg:101", "quality must be in 1-100, got 101"),
        ("jpeg:high", "quality must be an integer 1-100"),
        ("jpeg:", "quality must be an integer"),
        ("compressai:nosuchnet:3", "unknown zoo model 'nosuchnet'"),
        ("compressai:bmshj2018-hyperprior:9", "quality must be in 1-8, got 9"),
        ("compressai:bmshj2018-hyperprior", "expected compressai:<zoo-name>:<quality>"),
        ("learned:", "needs a checkpoint"),
        ("learned:/no/such/ckpt.pt", "does not exist"),
        ("external:/no/such/dir", "is not a folder"),
    ],
)
def test_bad_specs_raise_usage_error_naming_the_spec(spec: str, fragment: str) -> None:
    with pytest.raises(UsageError) as err:
        create_codec(spec)
    assert fragment in str(err.value)
    if spec != "nope":
        assert spec.split(":")[0] in str(err.value)


def test_unknown_scheme_lists_known_schemes_and_syntax() -> None:
    with pytest.raises(UsageError) as err:
        create_codec("jpg:50")
    msg = str(err.value)
    for scheme in ("compressai", "external", "jpeg", "learned"):
        assert scheme in msg
    assert "did you mean 'jpeg'" in msg
    assert "compressai:<zoo-name>:<quality>[:<checkpoint>]" in msg


def test_unknown_zoo_name_lists_zoo() -> None:
    with pytest.raises(UsageError, match="bmshj2018-factorized.*mbt2018-mean"):
        create_codec("compressai:bmshj2019:1")


def test_device_choice() -> None:
    import torch

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UsageError, match="device must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            resolve_device("cuda")


# --- jpeg ---------------------------------------------------------------------------------


def test_jpeg_nbytes_is_the_real_jpeg_length() -> None:
    img = _rng_image(70, 90)
    res = create_codec("jpeg:60").compress(img)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=60, subsampling=2)
    assert isinstance(res, CodecResult)
    assert res.nbytes == len(buf.getvalue())
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert np.array_equal(res.image, decoded)
    assert res.image.shape == img.shape and res.image.dtype == np.uint8
    # Lower quality -> fewer bytes, lower PSNR: the quality actually reaches the encoder.
    low = create_codec("jpeg:10").compress(img)
    assert low.nbytes < res.nbytes
    assert psnr(img, low.image) < psnr(img, res.image)


def test_jpeg_spec_is_canonical_and_fingerprint_tracks_quality() -> None:
    assert create_codec("jpeg:075").spec == "jpeg:75"
    assert create_codec("jpeg:1").quality == 1 and create_codec("jpeg:100").quality == 100
    a, b = create_codec("jpeg:75"), create_codec("jpeg:075")
    assert a.fingerprint() == b.fingerprint() != create_codec("jpeg:76").fingerprint()


def test_non_rgb_input_is_a_data_error_naming_the_file() -> None:
    gray = np.zeros((32, 32), np.uint8)
    with pytest.raises(DataError, match="a/b.jpg: codec input must be a uint8 HxWx3"):
        create_codec("jpeg:50").compress(gray, "a/b.jpg")
    with pytest.raises(DataError, match="uint8"):
        create_codec("jpeg:50").compress(np.zeros((8, 8, 3), np.float32))


# --- external -----------------------------------------------------------------------------


def test_external_mirror_lookup(tmp_path: Path) -> None:
    img = _rng_image(48, 64)
    mirror = tmp_path / "hific"
    (mirror / "D01_X" / "nat").mkdir(parents=True)
    # The tool wrote PNGs for JPEG originals: looked up by stem.
    Image.fromarray(255 - img).save(mirror / "D01_X" / "nat" / "a.png")
    codec = create_codec(f"external:{mirror}")
    res = codec.compress(img, "D01_X/nat/a.jpg")
    assert np.array_equal(res.image, 255 - img)
    assert res.nbytes == (mirror / "D01_X" / "nat" / "a.png").stat().st_size
    assert codec.spec == f"external:{mirror.resolve()}"


def test_external_missing_and_mismatched_files(tmp_path: Path) -> None:
    img = _rng_image(48, 64)
    Image.fromarray(img[:40]).save(tmp_path / "short.png")
    codec = create_codec(f"external:{tmp_path}")
    with pytest.raises(DataError, match="D02/nat/missing.jpg: no compressed file"):
        codec.compress(img, "D02/nat/missing.jpg")
    with pytest.raises(DataError, match=r"short.png: compressed image is 64x40, original"):
        codec.compress(img, "short.jpg")
    with pytest.raises(DataError, match="needs the image's relative path"):
        codec.compress(img)
    with pytest.raises(DataError, match="relative to the dataset root"):
        codec.compress(img, "../escape.jpg")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png: unreadable compressed image"):
        codec.compress(img, "broken.jpg")


def test_external_fingerprint_is_content_based(tmp_path: Path) -> None:
    img = _rng_image(32, 32)
    Image.fromarray(img).save(tmp_path / "a.png")
    before = create_codec(f"external:{tmp_path}").fingerprint()
    assert create_codec(f"external:{tmp_path}").fingerprint() == before
    Image.fromarray(255 - img).save(tmp_path / "a.png")
    assert create_codec(f"external:{tmp_path}").fingerprint() != before


# --- learned codec: real bitstreams -------------------------------------------------------


@pytest.fixture(scope="module")
def learned(tiny_codec: Path):
    return create_codec(f"learned:{tiny_codec}", device="cpu")


def test_learned_bitstream_round_trip(learned) -> None:
    img = skimage_photo("stereo_motorcycle")[:100, :150]  # not a multiple of 64: pad + crop
    data = learned.encode(img)
    assert isinstance(data, bytes)
    h, w, shape, strings = unpack_bitstream(data)
    assert (h, w) == (100, 150)
    assert shape == (128 // 16, 192 // 16)  # latents of the image padded to 128x192
    assert len(strings) == 1 and len(strings[0]) > 0  # factorized prior: one string (y)
    res = learned.compress(img)
    assert res.nbytes == len(data)
    assert np.array_equal(res.image, learned.decode(data))  # decoding needs only the bytes
    for broken in (data[:5], data + b"x"):
        with pytest.raises(DataError, match="corrupt codec bitstream"):
            learned.decode(broken)
    assert res.image.shape == img.shape and res.image.dtype == np.uint8
    bpp = 8 * res.nbytes / (100 * 150)
    assert 0 < bpp < 4
    # The bytes are the entropy-coded latents: 4x the area, about 4x the bytes.
    big = learned.compress(skimage_photo("stereo_motorcycle")[:200, :300])
    assert 2.5 * res.nbytes < big.nbytes < 6 * res.nbytes


def test_learned_quality_floor(learned) -> None:
    """The decoded images carry the picture, not just its average colour."""
    images = heldout_images()
    stats = evaluate_codec(learned, images, peaks=False)
    flat = [
        np.broadcast_to(im.reshape(-1, 3).mean(0).round().astype(np.uint8), im.shape)
        for im in images
    ]
    flat_psnr = float(np.mean([psnr(a, b) for a, b in zip(images, flat, strict=True)]))
    assert stats["psnr"] > flat_psnr + 1.0, (stats, flat_psnr)
    assert 0.01 < stats["bpp"] < 2.0, stats


def test_learned_codec_is_deterministic_and_keyed_by_content(
    learned, tiny_codec: Path, tmp_path
) -> None:
    img = heldout_images(128)[0]
    a, b = learned.compress(img), learned.compress(img)
    assert a.nbytes == b.nbytes and np.array_equal(a.image, b.image)
    assert learned.encode(img) == learned.encode(img)
    moved = tmp_path / "elsewhere.pt"
    shutil.copy(tiny_codec, moved)
    other = create_codec(f"learned:{moved}", device="cpu")
    assert other.spec != learned.spec
    assert other.fingerprint() == learned.fingerprint()  # same weights, other place
    assert other.encode(img) == learned.encode(img)
    assert learned.fingerprint() != create_codec("jpeg:50").fingerprint()


def test_learned_codec_shows_periodic_peaks_at_n_over_16(learned) -> None:
    """Bergmann et al.: 4 stride-2 synthesis stages leave amplitude peaks at k*N/16.

    Mean |FFT| over all 64x64 tiles of held-out photos and of their decodings; the peak
    statistic at multiples of 64/16 = 4 cycles, relative to the originals', must rise well
    above 1, while the same statistic between the peaks (offset 2) and for JPEG stays ~1.
    """
    images = heldout_images()
    decoded = [learned.compress(im).image for im in images]
    amp_orig, amp_dec = mean_amplitude(images), mean_amplitude(decoded)
    on_grid = periodic_peak_ratio(amp_dec) / periodic_peak_ratio(amp_orig)
    between = periodic_peak_ratio(amp_dec, offset=2) / periodic_peak_ratio(amp_orig, offset=2)
    jpeg = evaluate_codec(create_codec("jpeg:50"), images)["peak_gain"]
    assert on_grid > 1.5, on_grid
    assert 0.8 < between < 1.2, between
    assert 0.8 < jpeg < 1.2, jpeg
    # The peaks are in the compressed image, not an artefact of the statistic: originals ~1.
    assert 0.9 < periodic_peak_ratio(amp_orig) < 1.1


# --- training and checkpoints -------------------------------------------------------------


def test_checkpoint_contents(tiny_codec: Path) -> None:
    import torch

    ckpt = torch.load(tiny_codec, map_location="cpu", weights_only=True)
    assert ckpt["arch"] == "bmshj2018-factorized" and (ckpt["N"], ckpt["M"]) == (16, 16)
    assert ckpt["hparams"]["lmbda"] == TINY_CODEC["lmbda"]
    assert ckpt["hparams"]["steps"] == TINY_CODEC["steps"]
    for key in ("loss", "bpp_loss", "bpp", "psnr", "aux_loss"):
        assert np.isfinite(ckpt["stats"][key]), key
    assert ckpt["stats"]["bpp"] > 0
    # update(force=True) ran: the entropy coder's tables are in the checkpoint.
    assert ckpt["state_dict"]["entropy_bottleneck._quantized_cdf"].numel() > 0
    assert not [p for p in tiny_codec.parent.iterdir() if p.name.startswith(".")]  # no tmp left


def test_training_is_deterministic_per_seed(codec_train_images: Path, tmp_path: Path) -> None:
    import torch

    cfg = CodecTrainConfig(**{**TINY_CODEC, "channels": (8, 8), "steps": 6, "pool": 64})
    with torch_threads(1):
        train_codec(codec_train_images, tmp_path / "a.pt", cfg, progress=False)
        train_codec(codec_train_images, tmp_path / "b.pt", cfg, progress=False)
        cfg1 = CodecTrainConfig(
            **{**TINY_CODEC, "channels": (8, 8), "steps": 6, "pool": 64, "seed": 1}
        )
        train_codec(codec_train_images, tmp_path / "c.pt", cfg1, progress=False)
    a, b, c = (torch.load(tmp_path / f"{n}.pt", weights_only=True)["state_dict"] for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_training_input_errors(tmp_path: Path, codec_train_images: Path) -> None:
    cfg = CodecTrainConfig(**{**TINY_CODEC, "steps": 1})
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        train_codec(tmp_path / "empty", tmp_path / "x.pt", cfg, progress=False)
    with pytest.raises(UsageError, match="not a folder"):
        train_codec(tmp_path / "missing", tmp_path / "x.pt", cfg, progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataError, match=r"x.jpg: unreadable image"):
        train_codec(tmp_path / "bad", tmp_path / "x.pt", cfg, progress=False)
    with pytest.raises(UsageError, match="--crop 48: bmshj2018-hyperprior needs a multiple of 64"):
        CodecTrainConfig(arch="bmshj2018-hyperprior", crop=48).validate()
    with pytest.raises(UsageError, match="trainable archs"):
        CodecTrainConfig(arch="cheng2020-anchor").validate()
    assert not (tmp_path / "x.pt").exists()


def test_learned_rejects_foreign_checkpoints(tmp_path: Path) -> None:
    import torch

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"garbage")
    with pytest.raises(DataError, match="junk.pt: not a PyTorch checkpoint"):
        create_codec(f"learned:{junk}")
    bare = tmp_path / "bare.pt"
    torch.save({"g_a.0.weight": torch.zeros(1)}, bare)
    with pytest.raises(
        DataError, match="bare.pt: not an 'mdfr codec train' checkpoint.*compressai:"
    ):
        create_codec(f"learned:{bare}")


# --- CompressAI zoo: local cache and checkpoints -------------------------------------------


def test_zoo_weights_missing_from_cache_says_what_to_do(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(UsageError) as err:
        create_codec("compressai:bmshj2018-hyperprior:3")
    msg = str(err.value)
    expected = (
        tmp_path / "torch" / "hub" / "checkpoints" / "bmshj2018-hyperprior-3-6d87be32.pth.tar"
    )
    assert str(expected) in msg
    assert "compressai:bmshj2018-hyperprior:3:<checkpoint>" in msg and "--checkpoint" in msg
    with pytest.raises(UsageError, match="publishes no pretrained weights"):
        create_codec("compressai:bmshj2018-factorized-relu:2")


def test_zoo_loads_from_hub_cache_and_from_checkpoint(
    tiny_codec: Path, tmp_path: Path, monkeypatch
) -> None:
    """Our tiny model's weights stand in for the official bmshj2018-factorized q1 file."""
    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = zoo_weights_path("bmshj2018-factorized", 1)
    assert cached is not None and cached.name == "bmshj2018-factorized-prior-1-446d5c7f.pth.tar"
    cached.parent.mkdir(parents=True)
    state = torch.load(tiny_codec, weights_only=True)["state_dict"]
    torch.save(state, cached)  # the zoo files are bare state_dicts
    wrapped = tmp_path / "train_py_style.pth.tar"
    torch.save({"epoch": 3, "state_dict": state}, wrapped)  # CompressAI's train.py layout

    from_hub = create_codec("compressai:bmshj2018-factorized:1", device="cpu")
    from_ckpt = create_codec(f"compressai:bmshj2018-factorized:1:{wrapped}", device="cpu")
    learned = create_codec(f"learned:{tiny_codec}", device="cpu")
    assert from_hub.spec == "compressai:bmshj2018-factorized:1"
    assert from_ckpt.spec == f"compressai:bmshj2018-factorized:1:{wrapped.resolve()}"
    img = heldout_images(96)[1]
    assert from_hub.encode(img) == from_ckpt.encode(img) == learned.encode(img)
    # Same architecture, same weights: one codec, whichever file or scheme named it.
    assert from_hub.fingerprint() == from_ckpt.fingerprint() == learned.fingerprint()
    state["g_s.6.bias"] = state["g_s.6.bias"] + 0.01
    torch.save(state, wrapped)
    changed = create_codec(f"compressai:bmshj2018-factorized:1:{wrapped}", device="cpu")
    assert changed.fingerprint() != from_hub.fingerprint()

    wrong = tmp_path / "hyper.pt"
    from mdfr.data.codec_train import build_model

    torch.save(build_model("bmshj2018-hyperprior", 8, 8).state_dict(), wrong)
    with pytest.raises(DataError, match="hyper.pt is not a bmshj2018-factorized state_dict"):
        create_codec(f"compressai:bmshj2018-factorized:1:{wrong}")
    with pytest.raises(UsageError, match="does not exist"):
        create_codec(f"compressai:bmshj2018-factorized:1:{tmp_path / 'none.pt'}")


# --- mdfr codec ---------------------------------------------------------------------------


def test_cli_list(capsys) -> None:
    assert main(["codec", "list"]) == 0
    out = capsys.readouterr().out
    for text in (
        "jpeg:<quality 1-100>",
        "external:<dir>",
        "learned:",
        "bmshj2018-hyperprior",
        "mbt2018-mean",
    ):
        assert text in out
    assert main(["codec", "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {s["scheme"] for s in data["schemes"]} == {"compressai", "external", "jpeg", "learned"}


def test_cli_train_and_eval(codec_train_images: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli.pt"
    argv = ["codec", "train", "--images", str(codec_train_images), "--out", str(out)]
    argv += ["--channels", "8,8", "--steps", "3", "--crop", "32", "--pool", "32", "--no-progress"]
    with torch_threads(1):
        assert main(argv) == 0
    assert f"learned:{out}" in capsys.readouterr().out
    assert read_checkpoint(out)["hparams"]["steps"] == 3

    assert (
        main(["codec", "eval", "--codec", "jpeg:40", "--images", str(codec_train_images), "--json"])
        == 0
    )
    stats = json.loads(capsys.readouterr().out)
    assert stats["codec"] == "jpeg:40" and stats["images"] == 4 and stats["bpp"] > 0


def test_cli_errors_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["codec", "eval", "--codec", "jpeg:500", "--images", str(tmp_path)]) == 2
    assert "jpeg:500" in capsys.readouterr().err
    rc = main(
        ["codec", "eval", "--codec", "jpeg:50", "--checkpoint", "x.pt", "--images", str(tmp_path)]
    )
    assert rc == 2
    assert (
        "--checkpoint goes with a compressai:<zoo-name>:<quality> spec" in capsys.readouterr().err
    )
    assert main(["codec", "train", "--images", str(tmp_path), "--out", str(tmp_path / "o.pt")]) == 2
    assert "no images" in capsys.readouterr().err


@pytest.mark.parametrize(("arch", "stride"), [("mdfr-factorized-s2", 4), ("mdfr-factorized-s3", 8)])
def test_shallow_archs_train_save_and_code_real_bitstreams(
    arch: str, stride: int, codec_train_images: Path, tmp_path: Path
) -> None:
    """Our shallow factorized priors go through the same train -> checkpoint -> learned: path
    as CompressAI's, with latents on a grid 4x or 8x coarser than the image."""
    from mdfr.data.codec_train import downsampling_factor

    assert downsampling_factor(arch) == stride
    cfg = CodecTrainConfig(
        **{**TINY_CODEC, "arch": arch, "channels": (8, 8), "steps": 20, "pool": 64, "crop": 32}
    )
    out = tmp_path / f"{arch}.pt"
    with torch_threads(1):
        train_codec(codec_train_images, out, cfg, progress=False)
    codec = create_codec(f"learned:{out}", device="cpu")
    assert type(codec.model).__name__ == "ShallowFactorizedPrior"
    img = skimage_photo("stereo_motorcycle")[:100, :150]
    data = codec.encode(img)
    h, w, shape, strings = unpack_bitstream(data)
    assert (h, w) == (100, 150) and shape == (128 // stride, 192 // stride)
    res = codec.compress(img)
    assert res.nbytes == len(data) and res.image.shape == img.shape
    assert np.array_equal(res.image, codec.decode(data))
