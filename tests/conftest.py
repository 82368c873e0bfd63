"""Shared fixtures. Expensive ones (one synthetic dataset, one trained tiny codec) are
session-scoped and live in fixtures_*.py, imported here so every test module sees them."""

from __future__ import annotations

from fixtures_codec import *  # noqa: F403
from fixtures_data import *  # noqa: F403
