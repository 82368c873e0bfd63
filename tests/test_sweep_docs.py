"""docs/sweep-files.md is generated from the validator; it must be the current render, and
every key the shipped sweep files use must be in it."""

from __future__ import annotations

from pathlib import Path

import yaml

from mdfr.sweep import docs

ROOT = Path(__file__).resolve().parents[1]


def test_sweep_file_reference_is_up_to_date():
    assert docs.DOC.read_text() == docs.render(), (
        "docs/sweep-files.md is out of date: run `python -m mdfr.sweep.docs`"
    )


def test_every_key_of_the_shipped_sweep_files_is_documented():
    text = docs.DOC.read_text()
    for path in sorted((ROOT / "sweeps").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        for key, value in raw.items():
            assert f"`{key}`" in text, (path.name, key)
            if key in docs._SECTIONS and isinstance(value, dict):
                for sub in value:
                    assert f"`{key}.{sub}`" in text, (path.name, f"{key}.{sub}")
        for axis in (raw.get("grid") or {}) | (raw.get("search") or {}):
            assert f"`{axis}`" in text, (path.name, axis)
