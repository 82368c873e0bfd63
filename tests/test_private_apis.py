"""Private APIs of dependencies: none outside mdfr/sweep/ray_private.py, and every one in there
still where it was. A Ray upgrade that moves one fails here, naming it, instead of in a user's
sweep."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest
import ray

from mdfr.sweep import ray_private

ROOT = Path(__file__).resolve().parents[1]
ISOLATED = ROOT / "mdfr" / "sweep" / "ray_private.py"
# Spellings of a dependency's internals: a private module, a private attribute of an Optuna
# study, and the switch back to Tune's legacy console output.
PRIVATE = re.compile(r"\._private\b|\._storage\b|\._study_id\b|RAY_AIR_NEW_OUTPUT|CLIReporter")


@pytest.mark.parametrize(("module", "name"), ray_private.PRIVATE_NAMES)
def test_private_ray_name_still_exists(module, name):
    try:
        found = hasattr(importlib.import_module(module), name)
    except ImportError:
        found = False
    assert found, (
        f"Ray {ray.__version__} no longer has {module}.{name}: update "
        "mdfr/sweep/ray_private.py (see its docstring for what it is for)"
    )


def test_private_init_keywords_still_exist():
    # ray.init takes its underscore keywords through **kwargs and pops them by name.
    source = inspect.getsource(ray.init)
    missing = [k for k in ray_private.LOCAL_INIT_KWARGS if f'kwargs.pop("{k}"' not in source]
    assert not missing, f"Ray {ray.__version__}'s ray.init lost {missing}: update ray_private.py"


def test_token_helper_still_takes_its_keyword():
    module, name = ray_private.PRIVATE_NAMES[1]
    fn = getattr(importlib.import_module(module), name)
    assert "warn_if_disabled" in inspect.signature(fn).parameters


def test_no_private_api_outside_the_isolating_module():
    files = [*sorted((ROOT / "mdfr").rglob("*.py")), *sorted((ROOT / "cluster").glob("*.py"))]
    bad = []
    for path in files:
        if path == ISOLATED:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if PRIVATE.search(code):
                bad.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, "private dependency APIs outside ray_private.py:\n" + "\n".join(bad)


def test_single_node_mode_reaches_an_imported_ray():
    """What use_loopback relies on: the constant Ray reads its mode from, set in place."""
    constants = importlib.import_module("ray._private.ray_constants")
    before = constants.ENABLE_RAY_CLUSTER
    try:
        ray_private.set_cluster_mode(False)
        assert constants.ENABLE_RAY_CLUSTER is False
        ray_private.set_cluster_mode(True)
        assert constants.ENABLE_RAY_CLUSTER is True
    finally:
        constants.ENABLE_RAY_CLUSTER = before
