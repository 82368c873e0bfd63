"""Attack specs (``train:`` codecs a sweep trains first): parsing, checks without torch, the
cache key, and training into a folder (real ``train_codec``, a few steps). That a sweep trains
each codec once and then reuses it: tests/test_sweep_attack.py."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from mdfr.data import codec_specs
from mdfr.data.codec_specs import (
    attack_slug,
    check_spec,
    images_digest,
    train_config,
    train_into,
    train_key,
)
from mdfr.errors import UsageError

TINY = {
    "arch": "mdfr-factorized-s2",
    "channels": [4, 4],
    "steps": 3,
    "batch": 2,
    "crop": 32,
    "pool": 8,
    "device": "cpu",
}


def test_train_spec_settings_over_defaults_over_dataclass():
    cfg = train_config("train:lmbda=0.02,channels=16x24", {"lmbda": 0.5, "steps": 7})
    assert (cfg.lmbda, cfg.channels, cfg.steps) == (0.02, (16, 24), 7)
    assert cfg.batch == 8  # mdfr codec train's default
    assert train_config("train:", {"channels": [8, 8]}).channels == (8, 8)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("jpg:50", "unknown codec 'jpg:50' (did you mean 'jpeg'?)"),
        ("jpeg:0", "quality must be in 1-100"),
        ("learned:", "has no arguments"),
        ("nocolon", "expected a codec spec <scheme>:<arguments>"),
        ("train:lmbda", "'lmbda' is not <key>=<value>"),
        ("train:lamda=0.1", "unknown setting 'lamda' (did you mean 'lmbda'?)"),
        ("train:steps=1.5", "steps must be int"),
        ("train:lmbda=inf", "lmbda must be > 0"),
        ("train:channels=8", "channels must be N x M integers"),
        ("train:arch=hific", "arch 'hific' is not trainable"),
    ],
)
def test_bad_specs_name_the_spec_and_what_is_allowed(spec, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        check_spec(spec)


def test_checking_a_spec_loads_no_torch():
    import subprocess
    import sys

    probe = (
        "import sys\nfrom mdfr.data.codec_specs import check_spec\n"
        "for s in ('jpeg:50', 'train:lmbda=0.1', 'learned:x.pt', 'compressai:mbt2018:3'):\n"
        "    check_spec(s)\nprint('torch' in sys.modules, 'compressai' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_cache_key_follows_settings_and_images_not_the_device(synth_images, tmp_path):
    digest = images_digest(synth_images)
    cpu = train_config("train:lmbda=0.01", TINY)
    key = train_key(cpu, digest)
    assert train_key(train_config("train:lmbda=0.01,device=cuda", TINY), digest) == key
    assert train_key(train_config("train:lmbda=0.02", TINY), digest) != key
    # one image's bytes change: another codec
    images = tmp_path / "images"
    shutil.copytree(synth_images, images)
    victim = next(p for p in sorted(images.rglob("*.jpg")))
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert train_key(cpu, images_digest(images)) != key


def test_attack_slugs_are_folder_names_distinct_per_spec():
    specs = ["jpeg:50", "train:lmbda=0.01", "train:lmbda=0.010", "learned:/a b/c.pt"]
    slugs = [attack_slug(s) for s in specs]
    assert slugs[:2] == ["jpeg-50", "train-lmbda=0.01"]
    assert len(set(slugs)) == len(specs)
    assert all("/" not in s and " " not in s and ":" not in s for s in slugs)


def test_train_into_writes_a_usable_codec_and_what_the_cache_records(synth_images, tmp_path):
    from mdfr.data.codecs import create_codec

    cfg = train_config("train:lmbda=0.01", TINY)
    info = train_into("train:lmbda=0.01", cfg, synth_images, tmp_path)
    ckpt = tmp_path / codec_specs.CHECKPOINT
    assert info["checkpoint"] == str(ckpt) and info["spec"] == "train:lmbda=0.01"
    assert info["settings"]["channels"] == [4, 4] and info["stats"]["bpp"] > 0
    codec = create_codec(f"learned:{ckpt}", device="cpu")
    image = codec.compress(np.zeros((64, 64, 3), "uint8")).image
    assert image.shape == (64, 64, 3)
