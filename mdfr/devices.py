"""Device names (``auto``, ``cpu``, ``cuda``, ``cuda:N``): one rule for configs, codecs and the
engine."""

from __future__ import annotations

import re

from mdfr.errors import UsageError

# What a device setting may say; configs validate against it without importing torch.
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"
DEVICE_HELP = "auto, cpu, cuda or cuda:<index>"


def resolve_device(name: str | None, what: str = "device") -> str:
    """``auto``/``None``/"" -> ``cuda`` when available, else ``cpu``; other names are checked.

    Args:
        name: the setting.
        what: how the user set it, named in errors (``train.device``, ``--device``).

    Raises:
        UsageError: not a device name, or CUDA asked for where there is none.
    """
    # torch is imported here, not at the top: configs and codecs import this module on
    # `mdfr sweep validate`'s path, which must not pay for torch.
    import torch

    if name in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.match(DEVICE_PATTERN, name):
        raise UsageError(f"{what} must be {DEVICE_HELP}, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"{what}: {name!r} requested but CUDA is not available here")
    return name
