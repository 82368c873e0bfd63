"""Shared fixtures. Expensive ones (one synthetic dataset, one trained tiny codec) are
session-scoped and live in fixtures_*.py, imported here so every test module sees them."""

from __future__ import annotations

import pytest
from fixtures_codec import *  # noqa: F403
from fixtures_data import *  # noqa: F403
from fixtures_trained import *  # noqa: F403


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors gain nothing from intra-op threads, and on busy shared cores OpenMP's
    spinning threads cost several times the CPU time. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
