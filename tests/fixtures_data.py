"""Session fixtures for datasets (owned by the data work)."""

from __future__ import annotations
