from __future__ import annotations

import pytest

from mdfr.errors import UsageError
from mdfr.registry import Registry


def test_register_create_and_drop_none_kwargs():
    reg: Registry = Registry("widget")

    @reg.register("square")
    def square(x, scale=2):
        return x * x * scale

    assert reg.create("square", 3, scale=None) == 18
    assert "square" in reg and reg.names() == ["square"]
    with pytest.raises(ValueError):
        reg.register("square")(square)


def test_unknown_name_lists_known_names():
    reg: Registry = Registry("widget")
    reg.register("alpha")(lambda: 1)
    reg.register("beta")(lambda: 2)
    with pytest.raises(UsageError) as e:
        reg.get("alpah")
    msg = str(e.value)
    assert (
        "unknown widget 'alpah'" in msg and "alpha, beta" in msg and "did you mean 'alpha'" in msg
    )


def test_builtin_backbone_list_matches_the_filled_registry():
    """`sweep validate` checks backbones against BUILTIN_BACKBONES (no torch import); a
    backbone added to mdfr.models must be named there too."""
    from mdfr.registry import BUILTIN_BACKBONES, backbone_names

    assert sorted(BUILTIN_BACKBONES) == backbone_names()
